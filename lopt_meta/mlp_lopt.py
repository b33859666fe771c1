"""LOLv2-style learned optimizer: a small MLP applied to every parameter.

Metz et al., "Understanding and correcting pathologies in the training of learned optimizers"
(arXiv:1810.10180); the ``MLPLOpt`` of learned_optimization, as used by the NRES paper.

Per parameter, with ``g`` its gradient and ``p`` its value:

1. Six momentum EMAs ``m_d <- d m_d + (1 - d) g`` for ``d`` in
   ``(0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)`` (updated with this step's gradient first).
2. Features ``[g, p, m_0.1 .. m_0.9999]`` (8), each normalized over its tensor by
   ``x * rsqrt(1e-5 + mean(x^2))``.
3. 11 time features ``tanh(t / tau - 1)`` for ``tau`` in ``(1, 3, 10, ..., 1e5)``, the same for
   every parameter (``t``: steps taken so far).
4. An MLP ``19 -> 32 -> 32 -> 2`` (ReLU) gives a direction ``d`` and magnitude ``m``;
   ``step = d * exp(m * exp_mult) * step_mult`` (both 0.001) and ``p <- p - step``.

With the defaults theta has 1,762 parameters. The features of all tensors form one matrix
``[n, 8]``; because the 11 time features are the same on every row, their contribution to the
first layer is computed once per step as a bias (exactly ``[x, t] @ W = x @ W_x + t @ W_t``),
and on CPU the whole MLP runs as one fused kernel (:mod:`lopt_meta.kernels`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lopt_meta import features, kernels
from lopt_meta.base import LearnedOptimizer
from lopt_meta.prng import as_typed_key

MOMENTUM_DECAYS = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)


class PerParameterMLP(nn.Module):
  """The network applied to every parameter's features.

  ``__call__(x, time_features)`` with ``x: [n, F]`` (normalized per-parameter features) and
  ``time_features: [F_t]`` (shared by all rows) returns ``[n, outputs]``. The first layer's
  kernel has ``F + F_t`` rows, as if the time features were appended to every row.
  """

  hidden_sizes: Sequence[int] = (32, 32)
  outputs: int = 2

  @nn.compact
  def __call__(self, x: jax.Array, time_features: jax.Array) -> jax.Array:
    num_x = x.shape[-1]
    fan_in = num_x + time_features.shape[-1]
    h = x
    for i, width in enumerate(tuple(self.hidden_sizes) + (self.outputs,)):
      kernel = self.param(f"w{i}", nn.initializers.lecun_normal(), (fan_in, width))
      bias = self.param(f"b{i}", nn.initializers.zeros_init(), (width,))
      if i == 0:
        h = h @ kernel[:num_x] + (time_features @ kernel[num_x:] + bias)
      else:
        h = h @ kernel + bias
      if i < len(self.hidden_sizes):
        h = nn.relu(h)
      fan_in = width
    return h


def per_parameter_steps(network: PerParameterMLP, params, x: jax.Array, time_features: jax.Array, *,
                        exp_mult: float, step_mult: float) -> jax.Array:
  """``direction * exp(magnitude * exp_mult) * step_mult`` for every row of ``x: [n, F]``.

  For the two-hidden-layer networks of :class:`MLPLOpt` and :class:`AdafacMLPLOpt` this is one
  fused CPU kernel (:func:`lopt_meta.kernels.per_parameter_mlp`; plain JAX elsewhere), the same
  arithmetic as ``network.apply``.
  """
  if len(network.hidden_sizes) == 2 and network.outputs == 2:
    num_x = x.shape[-1]
    c = time_features @ params["w0"][num_x:] + params["b0"]
    return kernels.per_parameter_mlp(x, c, params["w0"][:num_x], params["w1"], params["b1"],
                                     params["w2"], params["b2"], exp_mult=exp_mult,
                                     step_mult=step_mult)
  out = network.apply({"params": params}, x, time_features)
  return out[:, 0] * jnp.exp(out[:, 1] * exp_mult) * step_mult


class MLPLOptState(NamedTuple):
  """Inner state of :class:`MLPLOpt`.

  Attributes:
    momentum: ``[6, n]`` float32: for each decay, the momentum EMAs of all ``n`` parameters,
      flattened (one contiguous row per decay).
    iteration: ``[] int32``, steps taken.
  """
  momentum: jax.Array
  iteration: jax.Array


class MLPLOpt(LearnedOptimizer):
  """LOLv2 per-parameter MLP learned optimizer.

  Args:
    hidden_sizes: widths of the MLP's hidden layers.
    momentum_decays: decays of the momentum EMAs (their number sets the feature count).
    exp_mult: scale of the magnitude output inside the exponential.
    step_mult: scale of the step.

  >>> import jax, jax.numpy as jnp
  >>> lopt = MLPLOpt()
  >>> theta = lopt.init_theta(jax.random.key(0))
  >>> sum(x.size for x in jax.tree.leaves(theta))
  1762
  >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
  >>> updates, state = lopt.update(theta, params, lopt.init(params), params)
  >>> jax.tree.map(jnp.shape, updates), state.momentum.shape
  ({'b': (2,), 'w': (3, 2)}, (6, 8))
  """

  name = "mlp"

  def __init__(self, *, hidden_sizes: Sequence[int] = (32, 32),
               momentum_decays: Sequence[float] = MOMENTUM_DECAYS, exp_mult: float = 0.001,
               step_mult: float = 0.001):
    self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
    self.momentum_decays = tuple(float(d) for d in momentum_decays)
    self.exp_mult = float(exp_mult)
    self.step_mult = float(step_mult)
    self.network = PerParameterMLP(hidden_sizes=self.hidden_sizes, outputs=2)
    self.num_features = 2 + len(self.momentum_decays)

  def config(self) -> dict[str, Any]:
    return {"hidden_sizes": list(self.hidden_sizes), "momentum_decays": list(self.momentum_decays),
            "exp_mult": self.exp_mult, "step_mult": self.step_mult}

  def init_theta(self, key):
    x = jnp.zeros((1, self.num_features), jnp.float32)
    timescales = jnp.zeros(len(features.TIMESCALES), jnp.float32)
    return self.network.init(as_typed_key(key), x, timescales)["params"]

  def init(self, params, *, num_steps=None):
    del num_steps
    n = features.FlatLayout.of(params).total
    return MLPLOptState(momentum=jnp.zeros((len(self.momentum_decays), n), jnp.float32),
                        iteration=jnp.zeros((), jnp.int32))

  def update(self, theta, grads, state, params, *, loss=None):
    del loss
    layout = features.FlatLayout.of(params)
    g, p = features.flatten(grads), features.flatten(params)
    decays = jnp.asarray(self.momentum_decays, jnp.float32)
    time = features.tanh_embedding(state.iteration)
    if len(self.hidden_sizes) == 2:  # the fused update (one CPU kernel; plain JAX elsewhere)
      num_x = self.num_features
      step, momentum = kernels.mlp_lopt_update(
          g, p, state.momentum, decays, time @ theta["w0"][num_x:] + theta["b0"],
          theta["w0"][:num_x], theta["w1"], theta["b1"], theta["w2"], theta["b2"],
          offsets=layout.offsets + (layout.total,), exp_mult=self.exp_mult,
          step_mult=self.step_mult)
    else:
      momentum = decays[:, None] * state.momentum + (1.0 - decays[:, None]) * g[None, :]
      x = jnp.concatenate([g[:, None], p[:, None], momentum.T], axis=1)
      step = per_parameter_steps(self.network, theta, features.segment_normalize(x, layout), time,
                                 exp_mult=self.exp_mult, step_mult=self.step_mult)
    updates = features.unflatten(-step, params)
    return updates, MLPLOptState(momentum=momentum, iteration=state.iteration + 1)
