"""Small pytree helpers used by the estimators (batched where / broadcast over leading axes)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def where_leading(mask: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
  """``jnp.where`` with ``mask: [P, ...]`` broadcast over the trailing axes of every leaf."""
  def pick(a, b):
    m = jnp.reshape(mask, mask.shape + (1,) * (a.ndim - mask.ndim))
    return jnp.where(m, a, b)
  return jax.tree.map(pick, on_true, on_false)


def broadcast_leading(tree: PyTree, shape: tuple[int, ...]) -> PyTree:
  """Adds leading axes ``shape`` to every leaf (a view where XLA can, no copy until written)."""
  return jax.tree.map(lambda x: jnp.broadcast_to(x, shape + jnp.shape(x)), tree)


def expand_axis(tree: PyTree, axis: int, size: int) -> PyTree:
  """Inserts a new axis of length ``size`` at ``axis`` in every leaf (repeating the leaf)."""
  def expand(x):
    x = jnp.expand_dims(x, axis)
    shape = list(x.shape)
    shape[axis] = size
    return jnp.broadcast_to(x, tuple(shape))
  return jax.tree.map(expand, tree)


def scale_rows(weights: jax.Array, tree: PyTree) -> PyTree:
  """``weights: [P]`` times each leaf ``[P, ...]``, row by row."""
  return jax.tree.map(lambda x: jnp.reshape(weights, weights.shape + (1,) * (x.ndim - 1)) * x, tree)


def all_finite(tree: PyTree, num_leading: int = 0) -> jax.Array:
  """True where every element of every leaf is finite, reduced over all but ``num_leading`` axes."""
  leaves = jax.tree.leaves(tree)
  out = None
  for x in leaves:
    f = jnp.all(jnp.isfinite(x), axis=tuple(range(num_leading, x.ndim)))
    out = f if out is None else out & f
  return out

