"""Truncated backpropagation through time (TBPTT): the automatic-differentiation baseline.

Each of ``N`` trajectories keeps its state across windows; per window the gradient of its mean
window loss ``(1/W) sum_t L_t`` with respect to theta is taken by reverse mode through the
window's ``scan``, with the incoming state treated as a constant (the truncation). The estimate
is the mean over trajectories. No noise, no pairs: ``N`` may be odd.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from lopt_meta.errors import ConfigError
from meta_train.engine import sharding, window
from meta_train.engine import tree as tree_lib
from meta_train.engine import maths
from meta_train.engine.estimators.base import (SystemEstimator, check_num_particles, check_system,
                                               check_unroll_length, make_metrics, start_workers)


class TBPTT(SystemEstimator):
  """Truncated backprop over windows of ``W`` steps, averaged over ``N`` trajectories.

  Args:
    system: the unrolled system (``step`` must be differentiable in theta).
    num_particles: ``N`` independent trajectories.
    unroll_length: ``W``, the truncation length.
    lockstep: start every trajectory at step 0 instead of burning them in to random positions.

  A trajectory whose window has a non-finite loss or gradient is left out of the mean and
  counted in ``metrics["nonfinite"]`` (its window's steps).
  """

  name = "tbptt"

  def __init__(self, system, *, num_particles: int, unroll_length: int, lockstep: bool = False,
               devices: Sequence[jax.Device] | None = None):
    self.system = check_system(system)
    if not self.system.differentiable:
      raise ConfigError("estimator", f"tbptt backpropagates through the steps, and the steps of "
                        f"{self.system.name!r} are not differentiable; use an ES estimator "
                        f"(nres, pes, gpes, full_es, truncated_es)")
    self.num_particles = check_num_particles(num_particles, antithetic=False)
    self.unroll_length = check_unroll_length(unroll_length, self.system)
    self.lockstep = bool(lockstep)
    self.mesh = sharding.pairs_mesh(self.num_particles, devices)
    super().__init__()

  def _config(self):
    return {"num_particles": self.num_particles, "unroll_length": self.unroll_length,
            "lockstep": self.lockstep}

  def _init(self, key, theta):
    return start_workers(self, key, theta, rows=self.num_particles, signs=(0.0,), sigma=1.0,
                         noise_rule=None, with_noise=False, accumulate=False)

  def _estimate(self, key, theta, ws):
    W = self.unroll_length
    theta_pp = tree_lib.broadcast_leading(theta, (self.num_particles,))

    def window_loss(theta_pp):
      new_ws, out = window.tbptt_window(self.system, theta_pp, ws, key, W, mesh=self.mesh)
      return jnp.sum(out.loss_only) / W, (new_ws, out)

    grads, (ws, out) = jax.grad(window_loss, has_aux=True)(theta_pp)
    ok = (out.count == W) & tree_lib.all_finite(grads, num_leading=1)
    weights = ok.astype(jnp.float32)
    n_ok = jnp.maximum(jnp.sum(weights), 1.0)
    grads = tree_lib.where_leading(ok, grads, jax.tree.map(jnp.zeros_like, grads))
    grad = jax.tree.map(lambda g: jnp.sum(g, axis=0) / n_ok, grads)
    return grad, ws, make_metrics(
        grad, meta_loss=jnp.sum(jnp.where(ok, out.loss_only, 0.0)) / (n_ok * W),
        grad_variance=maths.variance_of_mean(grads, weights),
        nonfinite=jnp.sum(jnp.where(ok, 0, W)), resets=jnp.sum(out.resets),
        unroll_steps=self.steps_per_estimate)
