"""The estimators' arithmetic as standalone functions.

A leaf of the engine: it imports only :mod:`meta_train.engine.tree` and :mod:`meta_train.engine.xla_cpu`,
so the workers (below the estimators) and the estimators both use it without an import cycle.

Normalization convention (one for every ES estimator in lopt-meta):

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

from meta_train.engine import tree as tree_lib
from meta_train.engine import xla_cpu

PyTree = Any


def credited_sums(dl: jax.Array, credits: list[PyTree]) -> PyTree:
  """Each pair's ``sum_t (L+_t - L-_t) c_t`` from its sums over the window's noise segments.

  The credit ``c_t`` is constant within a segment, so the sum over steps is a sum over segments
  of (the segment's summed loss differences) x (its credit).

  Args:
    dl: ``[E, P]``, ``sum_{t in segment e} (L+_t - L-_t)`` of each pair.
    credits: ``E`` theta-like trees, leaves ``[P, ...]``: each segment's credit.

  Returns:
    theta-like, leaves ``[P, ...]``.
  """
  return jax.tree.map(
      lambda *cs: sum(dl[e].reshape((-1,) + (1,) * (c.ndim - 1)) * c for e, c in enumerate(cs)),
      *credits)


def sum_pairs(tree: PyTree) -> PyTree:
  """Sums over the leading pairs axis of every leaf: leaves ``[P, ...]`` -> ``[...]``, each in
  its own dtype (one product for all leaves: :func:`meta_train.engine.xla_cpu.sum_leading_tree`)."""
  return xla_cpu.sum_leading_tree(tree)


def antithetic_grad(gsum: PyTree, count: jax.Array, sigma: float) -> PyTree:
  """The ES estimate from per-pair sums.

  Args:
    gsum: theta-like, leaves ``[P, ...]``: ``sum_t (L+_t - L-_t) c_t`` of each pair.
    count: ``[P] int``, the valid steps of each pair.
    sigma: the noise scale.

  Returns:
    theta-like ``g = sum_i gsum_i / (2 sigma^2 sum_i count_i)`` (zeros if nothing was valid).
  """
  totals = sum_pairs({"gsum": gsum, "count": count})
  return _normalize(totals["gsum"], totals["count"], sigma)


def _normalize(gsum_total: PyTree, count_total: jax.Array, sigma: float) -> PyTree:
  denom = 2.0 * sigma**2 * jnp.maximum(count_total, 1).astype(jnp.float32)
  return jax.tree.map(lambda g: g / denom, gsum_total)


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
  totals = sum_pairs({"n": weights, "x": tree_lib.scale_rows(weights, per_pair)})
  return _variance_from(per_pair, weights, totals["n"], totals["x"])


def _variance_from(per_pair: PyTree, weights: jax.Array, n: jax.Array, weighted_sum: PyTree):
  """:func:`variance_of_mean` given ``n = sum_i w_i`` and ``sum_i w_i x_i`` (two-pass: the
  squared deviations from the mean are summed in a second product)."""
  mean = jax.tree.map(lambda s: s / jnp.maximum(n, 1.0), weighted_sum)
  deviations = jax.tree.map(lambda x, m: (x - m) ** 2, per_pair, mean)
  squares = sum_pairs(tree_lib.scale_rows(weights, deviations))
  total = sum(jnp.sum(s) for s in jax.tree.leaves(squares))
  return jnp.where(n > 1, total / jnp.maximum(n - 1.0, 1.0) / jnp.maximum(n, 1.0), 0.0)


def antithetic_summary(gsum: PyTree, count: jax.Array, sigma: float,
                       extra: dict[str, jax.Array]) -> tuple[PyTree, jax.Array, dict]:
  """:func:`antithetic_grad`, :func:`variance_of_mean` of the per-pair estimates, and the sums
  over pairs of the ``[P, ...]`` arrays in ``extra``, with two products over the pairs (one for
  every total, one for the squared deviations).

  Returns:
    ``(grad, grad_variance, totals)``; ``totals`` has ``extra``'s keys and ``"count"``.
  """
  per_pair = per_pair_grads(gsum, count, sigma)
  weights = (count > 0).astype(jnp.float32)
  totals = sum_pairs({**extra, "count": count, "gsum": gsum, "n": weights,
                      "x": tree_lib.scale_rows(weights, per_pair)})
  grad = _normalize(totals.pop("gsum"), totals["count"], sigma)
  variance = _variance_from(per_pair, weights, totals.pop("n"), totals.pop("x"))
  return grad, variance, totals


def global_norm(tree: PyTree) -> jax.Array:
  return optax.tree.norm(tree)
