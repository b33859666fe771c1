"""A window's noise and credit: the stretches ("segments") of steps with constant noise per pair.

Segment 0 carries on from the previous window; the draw in column ``e`` of the plan's ``draws``
opens segment ``e + 1``. A draw replaces the pair's noise ``eps`` with a fresh one. A segment's
steps are credited to its noise, or, under a noise rule that accumulates
(:attr:`~meta_train.engine.window.noise.NoiseRule.accumulates`), to the pair's own credit ``xi``,
which each draw updates by the rule's :meth:`~meta_train.engine.window.noise.NoiseRule.credit`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from meta_train.engine import keys as keys_lib
from meta_train.engine import tree as tree_lib
from meta_train.engine import xla_cpu
from meta_train.engine.window.particles import Particles
from meta_train.engine.window.noise import NoiseRule
from meta_train.engine.window.plan import WindowPlan

PyTree = Any


def sample_noise(keys: jax.Array, theta: PyTree, sigma: float) -> PyTree:
  """``sigma * N(0, I)`` noise shaped like ``theta``, one draw per key: leaves ``keys.shape + ...``.

  One normal draw of ``theta``'s flattened size per key (``jax.random.normal(key, (size,))``, one
  fused computation for all keys and leaves), unflattened into ``theta``'s structure and dtypes.
  """
  flat, unravel = ravel_pytree(theta)
  draws = sigma * keys_lib.normal(keys, flat.shape[0], flat.dtype)
  for _ in range(keys.ndim):
    unravel = jax.vmap(unravel)
  return unravel(draws)


class Segments(NamedTuple):
  """The ``E`` segments of a window: what each particle runs, and what its steps are credited to.

  Attributes:
    theta: ``E`` trees, each particle's theta in the segment: leaves ``[P * S, ...]``, or theta
      itself, shared by every particle (``theta_axis=None``).
    theta_axis: the vmap axis of ``theta``'s leaves: 0, or ``None`` when shared.
    opens: ``[P, E - 1]``, the window step at which segment ``e + 1`` opens (``W``: it does not);
      ``None`` when ``E == 1``.
    particle_opens: ``opens`` per particle, ``[P * S, E - 1]`` (materialized once per window).
    credit: ``E`` theta-like trees, leaves ``[P, ...]``: the credit of the segment's steps;
      ``None`` without noise.
    eps: leaves ``[P, ...]``, the noise in use after the window (the worker state's).
    xi: leaves ``[P, ...]``, the credit after the window if the noise rule accumulates one.
  """
  theta: list
  theta_axis: int | None
  opens: jax.Array | None
  particle_opens: jax.Array | None
  credit: list | None
  eps: PyTree
  xi: PyTree

  @property
  def num_segments(self) -> int:
    return len(self.theta)

  def index(self, j: jax.Array) -> jax.Array:
    """The segment of window step ``j`` per pair: ``[P]`` for a scalar ``j``, ``[W, P]`` for
    ``j: [W, 1]``."""
    return jnp.sum(jnp.expand_dims(j, -1) >= self.opens, axis=-1, dtype=jnp.int32)

  def theta_at(self, j: jax.Array) -> PyTree:
    """Each particle's theta at window step ``j`` (a chain of ``E - 1`` selects)."""
    out = self.theta[0]
    for e in range(1, self.num_segments):
      out = tree_lib.where_leading(j >= self.particle_opens[:, e - 1], self.theta[e], out)
    return out


def unperturbed(theta: PyTree, eps: PyTree, xi: PyTree, *, particles: Particles | None = None
                ) -> Segments:
  """One segment running ``theta`` itself: shared, or one per pair (leaves ``[P, ...]``) when
  ``particles`` is given (truncated backprop differentiates each pair's copy)."""
  if particles is None:
    return Segments([theta], None, None, None, None, eps, xi)
  return Segments([particles.per_particle(theta)], 0, None, None, None, eps, xi)


def at_first_step(plan: WindowPlan, theta: PyTree, eps: PyTree, xi: PyTree, noise_keys: jax.Array,
                  *, particles: Particles, sigma: float, noise_rule: NoiseRule) -> Segments:
  """One segment, for a window whose draws all fall on its first step: one noise vector per
  pair is drawn (``noise_keys: [P]``, the keys of step 0) and taken by the pairs whose plan
  draws at step 0."""
  if noise_rule.draws_every_window:
    draws = jnp.ones_like(plan.began)  # static: the selects below fold away
  else:
    draws = jnp.any(plan.draws == 0, axis=1)
  new = xla_cpu.materialize(sample_noise(noise_keys, theta, sigma))
  eps = tree_lib.where_leading(draws, new, eps)
  if noise_rule.accumulates:
    xi = tree_lib.where_leading(draws, noise_rule.credit(xi, new, plan.start == 0), xi)
  credit = xi if noise_rule.accumulates else eps
  return Segments([particles.perturbed(theta, eps)], 0, None, None, [credit], eps, xi)


def at_every_draw(plan: WindowPlan, theta: PyTree, eps: PyTree, xi: PyTree, noise_keys: jax.Array,
                  *, particles: Particles, sigma: float, noise_rule: NoiseRule) -> Segments:
  """``M + 1`` segments, one per draw of the plan (``noise_keys: [P, M]``, the keys of the draw
  steps), with each segment's perturbed theta materialized once (``[P * S, ...]`` per segment)."""
  fresh = xla_cpu.materialize(sample_noise(noise_keys, theta, sigma))  # [P, M, ...]
  num_draws = plan.draws.shape[1]
  noise = [eps] + [jax.tree.map(lambda x, e=e: x[:, e], fresh) for e in range(num_draws)]
  if noise_rule.accumulates:
    credit = [xi]
    for e in range(num_draws):
      credit.append(noise_rule.credit(credit[-1], noise[e + 1], plan.draws[:, e] == plan.start))
  else:
    credit = noise
  theta_rows = xla_cpu.materialize([particles.perturbed(theta, n) for n in noise])
  last = jnp.sum(plan.draws < plan.num_steps, axis=1, dtype=jnp.int32)  # the segment in use after
  stack = lambda rows: jax.tree.map(lambda *xs: jnp.stack(xs, axis=1), *rows)
  eps = xla_cpu.select_rows(last, stack(noise))
  if noise_rule.accumulates:
    xi = xla_cpu.select_rows(last, stack(credit))
  particle_opens = xla_cpu.materialize(particles.per_particle(plan.draws))
  return Segments(theta_rows, 0, plan.draws, particle_opens, credit, eps, xi)

