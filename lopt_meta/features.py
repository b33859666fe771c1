"""Per-parameter input features of learned optimizers, and the flat layout that batches them.

The learned optimizers compute their features for every tensor and feed the per-parameter
network *one* matrix ``[n, F]`` holding the features of all ``n`` parameters (few, large
matrices keep the CPU busy; see benchmarks/README.md). :class:`FlatLayout` records where each tensor sits in the
flattened vector, so that per-tensor normalization stays a cheap reduction per slice.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

TIMESCALES = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)


class FlatLayout(NamedTuple):
  """Static offsets and sizes of the leaves of a pytree in its flattened vector."""
  offsets: tuple[int, ...]
  sizes: tuple[int, ...]
  shapes: tuple[tuple[int, ...], ...]
  total: int

  @classmethod
  def of(cls, tree: PyTree) -> "FlatLayout":
    shapes = tuple(tuple(np.shape(x)) for x in jax.tree.leaves(tree))
    sizes = tuple(int(np.prod(s)) for s in shapes)
    offsets = tuple(int(o) for o in np.cumsum((0,) + sizes[:-1]))
    return cls(offsets=offsets, sizes=sizes, shapes=shapes, total=int(sum(sizes)))


def flatten(tree: PyTree) -> jax.Array:
  """All leaves raveled and concatenated: ``[n]`` (float32)."""
  return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(tree)])


def unflatten(flat: jax.Array, like: PyTree) -> PyTree:
  """Inverse of :func:`flatten` (leaves back in ``like``'s shapes and dtypes)."""
  leaves, treedef = jax.tree.flatten(like)
  layout = FlatLayout.of(like)
  out = [jnp.reshape(flat[o:o + n], s).astype(x.dtype)
         for o, n, s, x in zip(layout.offsets, layout.sizes, layout.shapes, leaves)]
  return jax.tree.unflatten(treedef, out)


def second_moment_normalizer(x: jax.Array, axis, eps: float = 1e-5) -> jax.Array:
  """``x * rsqrt(eps + mean(x^2))`` over ``axis`` (each feature scaled to unit second moment)."""
  return x * jax.lax.rsqrt(eps + jnp.mean(jnp.square(x), axis=axis, keepdims=True))


def segment_normalize(x: jax.Array, layout: FlatLayout, eps: float = 1e-5) -> jax.Array:
  """:func:`second_moment_normalizer` of each tensor's rows of ``x: [n, F]``, separately."""
  parts = [second_moment_normalizer(x[o:o + n], axis=0, eps=eps)
           for o, n in zip(layout.offsets, layout.sizes)]
  return jnp.concatenate(parts, axis=0)


def tanh_embedding(iteration: jax.Array) -> jax.Array:
  """``tanh(t / tau - 1)`` for the 11 timescales ``tau`` in :data:`TIMESCALES`: ``[11]``."""
  t = jnp.asarray(iteration, jnp.float32)
  return jnp.tanh(t / jnp.asarray(TIMESCALES, jnp.float32) - 1.0)


def ema(decays: jax.Array, acc: jax.Array, value: jax.Array) -> jax.Array:
  """``acc <- d * acc + (1 - d) * value`` for each decay ``d`` on the last axis of ``acc``."""
  return decays * acc + (1.0 - decays) * value[..., None]


def factored_dims(shape: tuple[int, ...]) -> tuple[int, int] | None:
  """The two largest dimensions ``(d1, d0)`` (second largest, largest) of a tensor of rank >= 2,
  the ones Adafactor factors; ``None`` for vectors and scalars."""
  if len(shape) < 2:
    return None
  order = np.argsort(shape, kind="stable")
  return int(order[-2]), int(order[-1])


def safe_rsqrt(x: jax.Array) -> jax.Array:
  return jax.lax.rsqrt(jnp.maximum(x, 1e-9))
