"""Truncated ES (TES): each window restarts both particles of a pair from one shared state.

Per window, each pair draws fresh ``eps``, unrolls ``theta + eps`` and ``theta - eps`` ``W`` steps
from its shared state and estimates from those ``W`` losses only; the shared state is then
advanced the same ``W`` steps under the unperturbed ``theta`` (a third branch run alongside). The
estimator ignores every effect of theta older than the window: it is biased (truncation bias),
e.g. it pushes theta the wrong way on influence balancing. The first of the two variants in the
ES-Single paper, Appendix C.1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from meta_train import tree as tree_lib
from meta_train import workers
from meta_train.estimators import maths
from meta_train.estimators.base import (Estimator, check_num_particles, check_sigma, check_system,
                                        check_unroll_length, es_metrics)
from meta_train.workers import NoiseSchedule

_SIGNS = (1.0, -1.0, 0.0)  # theta + eps, theta - eps, theta (the shared state's own branch)


class TruncatedES(Estimator):
  """Truncated ES with one shared state per pair (fresh noise every window, no accumulation).

  Args: as :class:`meta_train.estimators.NRES`. ``metrics`` adds ``meta_loss_center``, the
  window's mean loss under the unperturbed theta.
  """

  name = "tes"
  schedule = NoiseSchedule(every_window=True)

  def __init__(self, system, *, num_particles: int, sigma: float, unroll_length: int,
               lockstep: bool = False):
    self.system = check_system(system)
    self.num_particles = check_num_particles(num_particles)
    self.sigma = check_sigma(sigma)
    self.unroll_length = check_unroll_length(unroll_length, self.system)
    self.lockstep = bool(lockstep)
    super().__init__()

  @property
  def steps_per_estimate(self) -> int:
    return (self.num_particles + self.num_particles // 2) * self.unroll_length  # + the centre

  def _config(self):
    return {"num_particles": self.num_particles, "sigma": self.sigma,
            "unroll_length": self.unroll_length, "lockstep": self.lockstep}

  def _init(self, key, theta):
    init_key, unlock_key = jax.random.split(key)
    ws = workers.init_workers(self.system, theta, init_key, self.num_particles // 2, 1,
                              with_noise=True, accumulate=False)
    if not self.lockstep:
      ws = workers.step_unlock(self.system, theta, ws, unlock_key, signs=(0.0,), sigma=self.sigma,
                               schedule=None, window_length=self.unroll_length)
    return ws

  def _estimate(self, key, theta, ws):
    branches = ws.replace(states=tree_lib.expand_axis(
        jax.tree.map(lambda x: x[:, 0], ws.states), 1, len(_SIGNS)))
    branches, out = workers.run_window(self.system, theta, branches, key, self.unroll_length,
                                       signs=_SIGNS, sigma=self.sigma, schedule=self.schedule)
    ws = branches.replace(states=jax.tree.map(lambda x: x[:, 2:3], branches.states))
    grad = maths.antithetic_grad(out.gsum, out.count, self.sigma)
    metrics = es_metrics(out, grad, self.sigma, self.steps_per_estimate)
    metrics["meta_loss_center"] = (jnp.sum(out.loss_sum[:, 2])
                                   / jnp.maximum(jnp.sum(out.count), 1).astype(jnp.float32))
    return grad, ws, metrics
