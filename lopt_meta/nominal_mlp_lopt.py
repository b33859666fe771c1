"""A per-parameter MLP learned optimizer added to a nominal Adam step.

Harrison, Metz and Sohl-Dickstein, "A Closer Look at Learned Optimization: Stability,
Robustness, and Inductive Biases" (NeurIPS 2022, arXiv:2209.11208): a learned optimizer that
adds its learned step to a *nominal* hand-designed descent step is more stable and generalizes
further than one that must learn descent from scratch. Here the nominal step is Adam's, at a
learned rate with a learned schedule; the learned step is LOLv2's per-parameter MLP
(:class:`lopt_meta.MLPLOpt`) with Adam's direction among its features.

Per parameter, with ``g`` its gradient, ``p`` its value and ``t`` the steps taken before this one:

1. Momentum EMAs ``m_d <- d m_d + (1 - d) g`` for ``d`` in ``momentum_decays`` (including
   Adam's ``beta1 = 0.9``) and the second moment ``v <- beta2 v + (1 - beta2) g^2``.
2. Adam's direction ``a = m_hat / (sqrt(v_hat) + eps)``, ``m_hat = m_beta1 / (1 - beta1^(t+1))``,
   ``v_hat = v / (1 - beta2^(t+1))`` (optax.adam's arithmetic).
3. Features ``[g, p, m_d ..., a, sqrt(v_hat)]``, each normalized over its tensor by
   ``x * rsqrt(1e-5 + mean(x^2))``, and the 11 time features ``tau(t) = tanh(t / tau - 1)``.
4. The MLP ``F + 11 -> 32 -> 32 -> 2`` gives direction ``d`` and magnitude ``m`` per parameter.
5. ``step = learning_rate * exp(log_lr_scale + tau(t) . schedule) * a
   + d * exp(m * exp_mult) * step_mult``; ``p <- p - step``.

theta is ``{"log_lr_scale": [], "schedule": [11], "mlp": {w0, b0, w1, b1, w2, b2}}``.
``init_theta`` sets ``log_lr_scale = 0``, ``schedule = 0`` and the MLP's last layer to zero:
**before meta-training the optimizer is Adam at ``learning_rate``** (1e-3, Adam's default),
step for step. Meta-training learns the rate, its schedule over time, and a
per-parameter correction. Because the nominal step is Adam's, the step size follows each
parameter's gradient statistics (it shrinks as the gradient noise dominates), which an MLP on
per-tensor-normalized features cannot see.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lopt_meta import features
from lopt_meta.base import LearnedOptimizer
from lopt_meta.mlp_lopt import MOMENTUM_DECAYS, PerParameterMLP, per_parameter_steps
from lopt_meta.prng import as_typed_key


class NominalMLPLOptState(NamedTuple):
  """Inner state of :class:`NominalMLPLOpt`.

  Attributes:
    momentum: ``[K, n]`` float32 momentum EMAs of all ``n`` parameters (one row per decay).
    second_moment: ``[n]`` float32, Adam's ``v``.
    iteration: ``[] int32``, steps taken.
  """
  momentum: jax.Array
  second_moment: jax.Array
  iteration: jax.Array


class NominalMLPLOpt(LearnedOptimizer):
  """Adam at a learned rate and schedule plus a learned per-parameter MLP step.

  Args:
    hidden_sizes: widths of the MLP's hidden layers.
    momentum_decays: decays of the momentum EMAs; must contain ``beta1``.
    beta1, beta2, eps: Adam's constants (optax.adam's defaults).
    learning_rate: the nominal rate before meta-training (theta scales it).
    exp_mult, step_mult: scales of the learned step, as in :class:`MLPLOpt`.

  >>> import jax, jax.numpy as jnp
  >>> lopt = NominalMLPLOpt()
  >>> theta = lopt.init_theta(jax.random.key(0))
  >>> sum(x.size for x in jax.tree.leaves(theta))
  1838
  >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
  >>> updates, state = lopt.update(theta, params, lopt.init(params), params)
  >>> [round(float(u), 6) for u in updates["w"].ravel()]  # Adam(1e-3)'s first step: -lr sign(g)
  [-0.001, -0.001, -0.001, -0.001, -0.001, -0.001]
  """

  name = "nominal_mlp"

  def __init__(self, *, hidden_sizes: Sequence[int] = (32, 32),
               momentum_decays: Sequence[float] = MOMENTUM_DECAYS, beta1: float = 0.9,
               beta2: float = 0.999, eps: float = 1e-8, learning_rate: float = 1e-3,
               exp_mult: float = 0.001, step_mult: float = 0.001):
    self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
    self.momentum_decays = tuple(float(d) for d in momentum_decays)
    if float(beta1) not in self.momentum_decays:
      raise ValueError(f"beta1: {beta1} must be one of momentum_decays {self.momentum_decays} "
                       "(Adam's first moment is that momentum row)")
    if not learning_rate > 0:
      raise ValueError(f"learning_rate: must be > 0, got {learning_rate}")
    self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
    self.learning_rate = float(learning_rate)
    self.exp_mult = float(exp_mult)
    self.step_mult = float(step_mult)
    self.network = PerParameterMLP(hidden_sizes=self.hidden_sizes, outputs=2)
    self.num_features = 4 + len(self.momentum_decays)
    self._beta1_row = self.momentum_decays.index(float(beta1))

  def config(self) -> dict[str, Any]:
    return {"hidden_sizes": list(self.hidden_sizes),
            "momentum_decays": list(self.momentum_decays), "beta1": self.beta1,
            "beta2": self.beta2, "eps": self.eps, "learning_rate": self.learning_rate,
            "exp_mult": self.exp_mult, "step_mult": self.step_mult}

  def init_theta(self, key):
    x = jnp.zeros((1, self.num_features), jnp.float32)
    time = jnp.zeros(len(features.TIMESCALES), jnp.float32)
    mlp = self.network.init(as_typed_key(key), x, time)["params"]
    last = f"w{len(self.hidden_sizes)}"
    mlp = {**mlp, last: jnp.zeros_like(mlp[last])}  # no learned step before meta-training
    return {"log_lr_scale": jnp.zeros((), jnp.float32),
            "schedule": jnp.zeros(len(features.TIMESCALES), jnp.float32), "mlp": mlp}

  def init(self, params, *, num_steps=None):
    del num_steps
    n = features.FlatLayout.of(params).total
    return NominalMLPLOptState(
        momentum=jnp.zeros((len(self.momentum_decays), n), jnp.float32),
        second_moment=jnp.zeros((n,), jnp.float32), iteration=jnp.zeros((), jnp.int32))

  def update(self, theta, grads, state, params, *, loss=None):
    del loss
    layout = features.FlatLayout.of(params)
    g, p = features.flatten(grads), features.flatten(params)
    decays = jnp.asarray(self.momentum_decays, jnp.float32)[:, None]
    complements = jnp.asarray([1.0 - d for d in self.momentum_decays], jnp.float32)[:, None]
    momentum = complements * g[None, :] + decays * state.momentum  # optax's order and constants
    v = (1.0 - self.beta2) * jnp.square(g) + self.beta2 * state.second_moment
    count = state.iteration + 1
    m_hat = momentum[self._beta1_row] / (1.0 - self.beta1 ** count)
    v_hat = v / (1.0 - self.beta2 ** count)
    adam = m_hat / (jnp.sqrt(v_hat) + self.eps)

    time = features.tanh_embedding(state.iteration)
    x = jnp.concatenate([g[:, None], p[:, None], momentum.T, adam[:, None],
                         jnp.sqrt(v_hat)[:, None]], axis=1)
    learned = per_parameter_steps(self.network, theta["mlp"], features.segment_normalize(x, layout),
                                  time, exp_mult=self.exp_mult, step_mult=self.step_mult)
    rate = self.learning_rate * jnp.exp(theta["log_lr_scale"] + time @ theta["schedule"])
    step = rate * adam + learned
    updates = features.unflatten(-step, params)
    return updates, NominalMLPLOptState(momentum=momentum, second_moment=v,
                                        iteration=state.iteration + 1)
