"""PRNG keys at the public boundaries: typed keys and raw ``uint32`` keys alike.

JAX has two kinds of keys: typed key arrays (``jax.random.key(seed)``, dtype ``key<fry>``) and
raw ``uint32`` key data (``jax.random.PRNGKey(seed)``, ``uint32[2]`` for the default threefry
implementation), which most JAX code, tutorials, optax and Flax examples still make. For the same
seed they hold the same bits: ``jax.random.wrap_key_data(jax.random.PRNGKey(s))`` equals
``jax.random.key(s)``. Every public function of lopt-meta that takes a key passes it through
:func:`as_typed_key`, so that everything behind it sees typed keys and gives the same results for
either kind.
"""

from __future__ import annotations

import functools
from typing import Any

import jax

from lopt_meta.errors import ConfigError


@functools.lru_cache(maxsize=None)
def _raw_key_shape(impl_name: str) -> tuple[int, ...]:
  """The shape of one raw key of the default implementation (``(2,)`` for threefry)."""
  del impl_name  # the cache key: jax_default_prng_impl
  return tuple(jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape)


def _describe(x: Any) -> str:
  """``float32[2]``, ``key<fry>[3]``, ``uint32[]``; the type's name for a non-array."""
  shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
  if shape is None or dtype is None:
    return type(x).__name__
  return f"{dtype}[{','.join(str(d) for d in shape)}]"


def as_typed_key(key: Any, name: str = "key", *, batch_ndim: int = 0) -> jax.Array:
  """``key`` as a typed PRNG key array.

  A typed key array (``jax.random.key``) of ``batch_ndim`` dimensions is returned as it is; raw
  ``uint32`` key data of the default implementation (``jax.random.PRNGKey``: shape
  ``batch + (2,)`` for threefry) is wrapped with ``jax.random.wrap_key_data`` (the same bits).
  Anything else raises a :class:`ConfigError` naming ``name``. The checks read only the shape and
  dtype, so they run at trace time under ``jit``/``vmap`` (tracers included) and add no compute.

  Args:
    key: the key (an array or a tracer).
    name: the argument's name, for the error.
    batch_ndim: the key array's expected dimensions: 0 for one key, 1 for ``[n]`` keys.

  Returns:
    A typed key array of ``batch_ndim`` dimensions.
  """
  raw_shape = _raw_key_shape(str(jax.config.jax_default_prng_impl))
  dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
  if dtype is not None and shape is not None:
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      if len(shape) == batch_ndim:
        return key
    elif (dtype == "uint32" and len(shape) == batch_ndim + len(raw_shape)
          and tuple(shape[batch_ndim:]) == raw_shape):
      return jax.random.wrap_key_data(key)
  raw = f"uint32[{','.join(['n'] * batch_ndim + [str(d) for d in raw_shape])}]"
  if batch_ndim == 0:
    what = (f"must be a typed PRNG key (jax.random.key) or a raw {raw} key "
            f"(jax.random.PRNGKey)")
  else:
    typed = f"key[{','.join(['n'] * batch_ndim)}]"
    what = (f"must be a {typed} array of typed PRNG keys (jax.random.key) or raw {raw} keys "
            f"(jax.random.PRNGKey)")
  raise ConfigError(name, f"{what}; got {_describe(key)}")
