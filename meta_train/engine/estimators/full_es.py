"""Full-unroll ES: every estimate runs whole episodes from the start (the offline baseline).

    g = 1 / (2 sigma^2) * [L(theta + eps) - L(theta - eps)] * eps,   L = (1/T) sum_t L_t,

averaged over pairs. Written straight from the definition (one ``scan`` over ``T`` steps per
particle, vmapped), independently of the online workers, so that "NRES with ``W = T`` equals
FullES" checks the workers against the definition. Keys are derived exactly as the workers
derive them (:func:`meta_train.engine.keys.pair_step_key`), so the two agree for the same key.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from lopt_meta.errors import ConfigError
from meta_train.engine import keys as keys_lib
from meta_train.engine import sharding
from meta_train.engine.window import sample_noise
from meta_train.engine import maths
from meta_train.engine.estimators.base import (SystemEstimator, check_num_particles, check_sigma,
                                               check_system, make_metrics)


class FullES(SystemEstimator):
  """Antithetic ES over full episodes; one estimate per ``T`` steps (per episode: steps past the
  end of an episode shorter than ``T`` are left out).

  Args:
    system: the unrolled system (it must have a finite horizon).
    num_particles: ``N``, even; ``N/2`` antithetic pairs.
    sigma: the noise scale.

  ``init`` returns ``None``: FullES keeps no state between estimates.
  """

  name = "full_es"

  def __init__(self, system, *, num_particles: int, sigma: float,
               devices: Sequence[jax.Device] | None = None):
    self.system = check_system(system)
    if self.system.horizon is None:
      raise ConfigError("estimator",
                        f"full_es needs a finite horizon; {self.system.name!r} never resets")
    self.num_particles = check_num_particles(num_particles)
    self.sigma = check_sigma(sigma)
    self.unroll_length = self.system.horizon
    self.mesh = sharding.pairs_mesh(self.num_particles // 2, devices)
    super().__init__()

  def _config(self):
    return {"num_particles": self.num_particles, "sigma": self.sigma}

  def _init(self, key, theta):
    del key, theta
    return None

  def _estimate(self, key, theta, ws):
    del ws
    system, T, P = self.system, self.system.horizon, self.num_particles // 2
    pair_keys = jax.random.split(key, P)

    def pair(pair_key):
      k_noise = keys_lib.pair_step_key(pair_key, 0, keys_lib.NOISE)
      eps = jax.tree.map(lambda x: x[0], sample_noise(k_noise[None], theta, self.sigma))
      state0 = system.init(keys_lib.pair_step_key(pair_key, 0, keys_lib.RESET))
      keys = jax.vmap(keys_lib.pair_step_key, in_axes=(None, 0, None))(
          pair_key, jnp.arange(T), keys_lib.STEP)

      def losses(sign):
        th = jax.tree.map(lambda a, e: a + sign * e, theta, eps)
        return system.unroll(th, state0, keys)[1].astype(jnp.float32)
      pos, neg = losses(1.0), losses(-1.0)
      valid = jnp.isfinite(pos) & jnp.isfinite(neg) & (jnp.arange(T) < system.length_of(state0))
      dl = jnp.sum(jnp.where(valid, pos - neg, 0.0))
      loss = jnp.sum(jnp.where(valid, pos + neg, 0.0))
      return jax.tree.map(lambda e: dl * e, eps), jnp.sum(valid), loss, jnp.sum(~valid)

    per_pairs = jax.vmap(pair)
    if self.mesh is not None:
      per_pairs = jax.shard_map(per_pairs, mesh=self.mesh, in_specs=sharding.SHARDED,
                                out_specs=sharding.SHARDED, check_vma=False)
    gsum, count, loss_sum, nonfinite = per_pairs(pair_keys)
    grad = maths.antithetic_grad(gsum, count, self.sigma)
    return grad, None, make_metrics(
        grad, meta_loss=jnp.sum(loss_sum) / (2.0 * jnp.maximum(jnp.sum(count), 1)),
        grad_variance=maths.variance_of_mean(maths.per_pair_grads(gsum, count, self.sigma),
                                             (count > 0).astype(jnp.float32)),
        nonfinite=jnp.sum(nonfinite), resets=jnp.asarray(P, jnp.int32),
        unroll_steps=self.steps_per_estimate)
