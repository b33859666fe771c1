"""The workers' random numbers, fused: ``split``, ``fold_in`` and ``normal`` for threefry keys.

JAX lowers its threefry hash on CPU to a rolled ``while`` loop (five iterations of four rounds),
whose fixed cost is tens of microseconds, however few keys it hashes: more than a whole window
of a small system such as Lorenz. The workers derive every key of a window (the pairs' keys, each
step's keys, the episode-start and noise keys) and draw every noise vector with the same hash
written out round by round in ``jnp``, which XLA fuses into the computation around it.

The results are bit-identical to ``jax.random.split``, ``jax.random.fold_in`` and
``jax.random.normal`` (float32) for threefry keys under JAX's default
``jax_threefry_partitionable=True`` (tests pin this). Raw ``uint32`` keys are treated as
``jax.random`` treats them (keys of the default implementation) and come back raw. Keys of any
other PRNG implementation, the non-partitionable threefry mode and other dtypes go through
``jax.random`` itself, so every key behaves exactly as ``jax.random`` would treat it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def threefry2x32(k1: jax.Array, k2: jax.Array, x1: jax.Array,
                 x2: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The Threefry-2x32 block cipher (20 rounds), elementwise over broadcast ``uint32`` arrays.

  The same function as ``jax.extend.random.threefry2x32_p``, unrolled so that XLA fuses it.
  """
  def rotl(v, r):
    return (v << np.uint32(r)) | (v >> np.uint32(32 - r))
  ks = (k1, k2, k1 ^ k2 ^ _PARITY)
  x1, x2 = x1 + ks[0], x2 + ks[1]
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x1 = x1 + x2
      x2 = rotl(x2, r) ^ x1
    x1 = x1 + ks[(i + 1) % 3]
    x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x1, x2


def _fused(key: jax.Array) -> bool:
  """Whether the typed key array ``key`` takes the fused path: threefry, partitionable mode."""
  return (str(jax.random.key_impl(key)) == "threefry2x32"
          and bool(jax.config.jax_threefry_partitionable))


def _typed(key: jax.Array) -> tuple[jax.Array, bool]:
  """``(typed key array, whether key was raw uint32 key data)``."""
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key, False
  return jax.random.wrap_key_data(key), True


def _hash(key: jax.Array, counter: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``threefry2x32(key_data, (0, counter))``, broadcast over ``key``'s and ``counter``'s shapes."""
  data = jax.random.key_data(key)
  counter = jnp.asarray(counter, jnp.uint32)
  return threefry2x32(data[..., 0], data[..., 1], jnp.zeros_like(counter), counter)


def _wrap(y1: jax.Array, y2: jax.Array, like: jax.Array) -> jax.Array:
  return jax.random.wrap_key_data(jnp.stack([y1, y2], axis=-1), impl=jax.random.key_impl(like))


def split(key: jax.Array, num: int) -> jax.Array:
  """``jax.random.split(key, num)`` for one key: ``[num]`` keys."""
  key, raw = _typed(key)
  if not _fused(key):
    out = jax.random.split(key, num)
  else:
    out = _wrap(*_hash(key, jnp.arange(num, dtype=jnp.uint32)), key)
  return jax.random.key_data(out) if raw else out


def fold_in(keys: jax.Array, data) -> jax.Array:
  """``jax.random.fold_in`` elementwise: ``keys`` and the non-negative int ``data`` broadcast
  against each other (e.g. ``[P]`` keys and one step index, or ``[P, 1]`` keys and ``[P, E]``
  indices)."""
  keys, raw = _typed(keys)
  data = jnp.asarray(data)
  if not _fused(keys):
    shape = jnp.broadcast_shapes(keys.shape, data.shape)
    flat_keys = jnp.broadcast_to(keys, shape).reshape(-1)
    flat_data = jnp.broadcast_to(data, shape).reshape(-1)
    out = jax.vmap(jax.random.fold_in)(flat_keys, flat_data).reshape(shape)
  else:
    out = _wrap(*_hash(keys, data), keys)
  return jax.random.key_data(out) if raw else out


def normal(keys: jax.Array, size: int, dtype=jnp.float32) -> jax.Array:
  """``jax.random.normal(k, (size,), dtype)`` for every key: ``keys.shape + (size,)``."""
  keys, _ = _typed(keys)
  dtype = jnp.dtype(dtype)
  if not _fused(keys) or dtype != jnp.float32:
    flat = keys.reshape(-1)
    draws = jax.vmap(lambda k: jax.random.normal(k, (size,), dtype))(flat)
    return draws.reshape(keys.shape + (size,))
  y1, y2 = _hash(keys[..., None], jnp.arange(size, dtype=jnp.uint32))
  bits = y1 ^ y2
  # jax.random.uniform(lo, hi) with lo = nextafter(-1, 0), hi = 1, then sqrt(2) erfinv, as
  # jax.random.normal does: 23 random mantissa bits under the exponent of 1.0 give [1, 2).
  floats = jax.lax.bitcast_convert_type((bits >> np.uint32(9)) | np.uint32(0x3F800000),
                                        jnp.float32) - np.float32(1.0)
  lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
  uniform = jnp.maximum(lo, floats * (np.float32(1.0) - lo) + lo)
  return np.float32(np.sqrt(2)) * jax.lax.erf_inv(uniform)


RESET, NOISE, STEP = 0, 1, 2  # what a worker's key is for


def pair_step_key(pair_key: jax.Array, j, purpose: int) -> jax.Array:
  """The key of a pair at window step ``j`` for ``purpose`` (``RESET``, ``NOISE`` or ``STEP``):
  ``fold_in(pair_key, 3 j + purpose)``. ``pair_key`` and ``j`` broadcast (``[P]`` keys and one
  step, or ``[P, 1]`` keys and ``[P, M]`` steps). All branches of a pair use the pair's keys: the
  same initial state, the same data, common random numbers."""
  return fold_in(pair_key, 3 * jnp.asarray(j, jnp.int32) + purpose)
