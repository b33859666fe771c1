"""NRES whose estimate is clipped to a global norm: a new estimator with one option."""

import jax
import jax.numpy as jnp
import optax

from lopt_meta.errors import ConfigError
from meta_train import estimators


class ClippedNRES(estimators.NRES):
  """NRES, with each estimate scaled down to a global norm of at most ``max_norm``."""

  name = "clipped_nres"

  def __init__(self, system, *, num_particles: int, sigma: float, unroll_length: int,
               max_norm: float, lockstep: bool = False, devices=None):
    if not max_norm > 0:
      raise ConfigError("max_norm", f"must be positive; got {max_norm!r}")
    self.max_norm = float(max_norm)
    super().__init__(system, num_particles=num_particles, sigma=sigma,
                     unroll_length=unroll_length, lockstep=lockstep, devices=devices)

  def _config(self):
    return {**super()._config(), "max_norm": self.max_norm}

  def _estimate(self, key, theta, ws):
    grad, ws, metrics = super()._estimate(key, theta, ws)
    scale = jnp.minimum(1.0, self.max_norm / jnp.maximum(optax.tree.norm(grad), 1e-30))
    grad = jax.tree.map(lambda g: g * scale, grad)
    return grad, ws, {**metrics, "grad_norm": optax.tree.norm(grad)}


estimators.register("clipped_nres", ClippedNRES)
