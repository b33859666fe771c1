"""Hand-designed optimizers behind the learned-optimizer interface.

* :class:`Adam`, :class:`SGDM`: fixed hyperparameters, ``theta = {}`` (baselines).
* :class:`HyperAdam`: Adam whose hyperparameters are theta (``log`` learning rate, ``logit``
  betas, ``log`` epsilon), for hyperparameter optimization by ES.
* :class:`LRScheduleSGDM`: SGD with momentum whose learning-rate schedule is theta: log learning
  rates at evenly spaced knots over the horizon, linearly interpolated (the ES-Single paper's
  meta-learned learning-rate schedule).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt_meta.base import LearnedOptimizer
from lopt_meta.prng import as_typed_key


class _Fixed(LearnedOptimizer):
  """An optax optimizer with fixed hyperparameters; ``theta`` is empty."""

  def _tx(self) -> optax.GradientTransformation:
    raise NotImplementedError

  def init_theta(self, key):
    as_typed_key(key)  # checked like every key; theta does not depend on it
    return {}

  def init(self, params, *, num_steps=None):
    del num_steps
    return self._tx().init(params)

  def update(self, theta, grads, state, params, *, loss=None):
    del theta, loss
    return self._tx().update(grads, state, params)


class _AdamHyperparameters:
  """Adam's hyperparameters (the fixed values of :class:`Adam`, the start of :class:`HyperAdam`)."""

  def __init__(self, *, learning_rate: float = 1e-3, b1: float = 0.9, b2: float = 0.999,
               eps: float = 1e-8):
    self.learning_rate, self.b1, self.b2, self.eps = (float(learning_rate), float(b1), float(b2),
                                                      float(eps))

  def config(self):
    return {"learning_rate": self.learning_rate, "b1": self.b1, "b2": self.b2, "eps": self.eps}


class Adam(_AdamHyperparameters, _Fixed):
  """``optax.adam`` with fixed hyperparameters."""

  name = "adam"

  def _tx(self):
    return optax.adam(self.learning_rate, b1=self.b1, b2=self.b2, eps=self.eps)


class SGDM(_Fixed):
  """``optax.sgd`` with (heavy-ball) momentum and fixed hyperparameters."""

  name = "sgdm"

  def __init__(self, *, learning_rate: float = 0.1, momentum: float = 0.9):
    self.learning_rate, self.momentum = float(learning_rate), float(momentum)

  def config(self):
    return {"learning_rate": self.learning_rate, "momentum": self.momentum}

  def _tx(self):
    return optax.sgd(self.learning_rate, momentum=self.momentum)


class HyperAdamState(NamedTuple):
  mu: Any
  nu: Any
  count: jax.Array  # shape=(), dtype=int32


def _logit(p: float) -> float:
  return math.log(p / (1.0 - p))


class HyperAdam(_AdamHyperparameters, LearnedOptimizer):
  """Adam with learnable hyperparameters: ``theta = {log_lr, logit_b1, logit_b2, log_eps}``."""

  name = "hyper_adam"

  def init_theta(self, key):
    as_typed_key(key)  # checked like every key; theta does not depend on it
    f = lambda v: jnp.asarray(v, jnp.float32)
    return {"log_lr": f(math.log(self.learning_rate)), "logit_b1": f(_logit(self.b1)),
            "logit_b2": f(_logit(self.b2)), "log_eps": f(math.log(self.eps))}

  def init(self, params, *, num_steps=None):
    del num_steps
    zeros = jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32), params)
    return HyperAdamState(mu=zeros, nu=zeros, count=jnp.zeros((), jnp.int32))

  def update(self, theta, grads, state, params, *, loss=None):
    del params, loss
    lr, eps = jnp.exp(theta["log_lr"]), jnp.exp(theta["log_eps"])
    b1, b2 = jax.nn.sigmoid(theta["logit_b1"]), jax.nn.sigmoid(theta["logit_b2"])
    count = state.count + 1
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
    c1, c2 = 1 - b1 ** count, 1 - b2 ** count
    updates = jax.tree.map(lambda m, v: -lr * (m / c1) / (jnp.sqrt(v / c2) + eps), mu, nu)
    return updates, HyperAdamState(mu=mu, nu=nu, count=count)


class LRScheduleState(NamedTuple):
  velocity: Any
  iteration: jax.Array  # shape=(), dtype=int32


class LRScheduleSGDM(LearnedOptimizer):
  """SGD with momentum and a learned learning-rate schedule.

  ``theta: [num_knots]`` log learning rates at steps ``linspace(0, horizon, num_knots)``; the
  rate at step ``t`` interpolates them linearly (constant past the horizon).
  """

  name = "lr_schedule"

  def __init__(self, *, horizon: int = 1000, num_knots: int = 10, learning_rate: float = 0.1,
               momentum: float = 0.9):
    self.horizon, self.num_knots = int(horizon), int(num_knots)
    self.learning_rate, self.momentum = float(learning_rate), float(momentum)

  def config(self):
    return {"horizon": self.horizon, "num_knots": self.num_knots,
            "learning_rate": self.learning_rate, "momentum": self.momentum}

  def init_theta(self, key):
    as_typed_key(key)  # checked like every key; theta does not depend on it
    return jnp.full((self.num_knots,), math.log(self.learning_rate), jnp.float32)

  def init(self, params, *, num_steps=None):
    del num_steps
    return LRScheduleState(velocity=jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32), params),
                           iteration=jnp.zeros((), jnp.int32))

  def learning_rate_at(self, theta, iteration):
    knots = jnp.linspace(0.0, float(self.horizon), self.num_knots)
    return jnp.exp(jnp.interp(jnp.asarray(iteration, jnp.float32), knots, theta))

  def update(self, theta, grads, state, params, *, loss=None):
    del params, loss
    lr = self.learning_rate_at(theta, state.iteration)
    velocity = jax.tree.map(lambda v, g: self.momentum * v + g, state.velocity, grads)
    updates = jax.tree.map(lambda v: -lr * v, velocity)
    return updates, LRScheduleState(velocity=velocity, iteration=state.iteration + 1)
