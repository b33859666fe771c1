"""The estimators' arithmetic as standalone functions.

Normalization convention (one for every ES estimator in lopt-meta, DESIGN §2):

    g = 1 / (2 sigma^2 * C) * sum_{i in pairs} sum_{t in window} (L+_{i,t} - L-_{i,t}) * c_{i,t}

``C`` is the number of valid (pair, step) terms, ``P * W`` when every loss is finite (``P = N/2``
antithetic pairs, ``W`` steps), and ``c_{i,t}`` is the pair's credit at step ``t``: its noise
``eps_i`` (NRES, FullES, truncated ES) or the sum of its episode's noise blocks (PES, GPES_K). So
the estimate is a mean over pairs and over the window's steps, and it targets the gradient of the
*mean* per-step loss ``(1/T) sum_t L_t``, smoothed.

Converting: the NRES authors' code uses this convention (N counted in pairs). The ES-Single
listing counts particles and sums the window's losses (``mean_i eps_i L_i / sigma^2``): its
estimate is ``W`` times ours, so its learning rates are ``W`` times smaller for SGD (Adam is
nearly scale-free).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

PyTree = Any


def antithetic_grad(gsum: PyTree, count: jax.Array, sigma: float) -> PyTree:
  """The ES estimate from per-pair sums.

  Args:
    gsum: theta-like, leaves ``[P, ...]``: ``sum_t (L+_t - L-_t) c_t`` of each pair.
    count: ``[P] int``, the valid steps of each pair.
    sigma: the noise scale.

  Returns:
    theta-like ``g = sum_i gsum_i / (2 sigma^2 sum_i count_i)`` (zeros if nothing was valid).
  """
  total = jnp.maximum(jnp.sum(count), 1).astype(jnp.float32)
  return jax.tree.map(lambda g: jnp.sum(g, axis=0) / (2.0 * sigma**2 * total), gsum)


def per_pair_grads(gsum: PyTree, count: jax.Array, sigma: float) -> PyTree:
  """Each pair's own estimate ``gsum_i / (2 sigma^2 count_i)``: leaves ``[P, ...]``."""
  denom = 2.0 * sigma**2 * jnp.maximum(count, 1).astype(jnp.float32)
  return jax.tree.map(lambda g: g / jnp.reshape(denom, denom.shape + (1,) * (g.ndim - 1)), gsum)


def variance_of_mean(per_pair: PyTree, weights: jax.Array) -> jax.Array:
  """Estimated total variance ``tr Cov[g]`` of the mean of ``P`` independent per-pair estimates.

  Args:
    per_pair: theta-like, leaves ``[P, ...]``.
    weights: ``[P]``, 1 for pairs that contributed, 0 for pairs with no valid step.

  Returns:
    ``sum_d sample_var_d / P_valid`` (the spread across pairs over the number of pairs); 0 when
    fewer than two pairs contributed.
  """
  n = jnp.sum(weights)
  def leaf_var(x):
    w = jnp.reshape(weights, weights.shape + (1,) * (x.ndim - 1))
    mean = jnp.sum(w * x, axis=0) / jnp.maximum(n, 1.0)
    return jnp.sum(w * (x - mean) ** 2)
  total = sum(jax.tree.leaves(jax.tree.map(leaf_var, per_pair)))
  return jnp.where(n > 1, total / jnp.maximum(n - 1.0, 1.0) / jnp.maximum(n, 1.0), 0.0)


def global_norm(tree: PyTree) -> jax.Array:
  return optax.tree.norm(tree)
