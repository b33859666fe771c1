"""MLP learned optimizer with Adafactor-style factored accumulators and learnable decays.

The ``AdafacMLPLOpt`` of learned_optimization (the small per-parameter network later learned
optimizers build on). Accumulators, per parameter tensor (decays on a trailing axis):

* momentum ``m`` at decays ``(0.9, 0.99, 0.999)``: ``m <- d m + (1 - d) g``;
* second moment ``rms`` at decay ``0.999``: ``rms <- d rms + (1 - d) g^2``;
* Adafactor accumulators at decays ``(0.9, 0.99, 0.999)`` of ``g^2 + 1e-30``: for tensors of rank
  >= 2, a row accumulator (mean over the largest dimension ``d0``) and a column accumulator (mean
  over the second largest ``d1``); for vectors and scalars, a full accumulator ``v``.

All decays are learnable: ``decay = 1 - exp(10 (log(1 - d_init) / 10 + theta_decay))``, with the
``theta_decay`` offsets starting at zero.

The 28 per-parameter features, in order (each normalized over its tensor by
``x * rsqrt(1e-5 + mean(x^2))``), then the 11 time features ``tanh(t / tau - 1)``:

====  =====================================  =========================================================
 #    feature                                definition
====  =====================================  =========================================================
0     gradient                               ``g``
1     parameter                              ``p``
2-4   momentum                               ``m`` (3 decays)
5     second moment                          ``rms``
6-8   momentum / rms                         ``m * rsqrt(rms + 1e-6)``
9     inverse rms                            ``rsqrt(rms + 1e-6)``
10-12 factored gradient                      ``g * row_factor * col_factor`` (rank >= 2), else
                                             ``g * rsqrt(v + 1e-9)``
13-15 row accumulator                        ``v_row`` broadcast along ``d0`` (else ``v``)
16-18 column accumulator                     ``v_col`` broadcast along ``d1`` (else ``v``)
19-21 inverse sqrt row accumulator           ``rsqrt(v_row + 1e-8)`` (else ``rsqrt(v + 1e-8)``)
22-24 inverse sqrt column accumulator        ``rsqrt(v_col + 1e-8)`` (else ``rsqrt(v + 1e-8)``)
25-27 factored momentum                      ``m * row_factor * col_factor`` (else
                                             ``m * (v + 1e-6)^-0.5``)
====  =====================================  =========================================================

with ``row_factor = rsqrt(max(v_row / (mean of v_row over d1 + 1e-9), 1e-9))`` and
``col_factor = rsqrt(max(v_col, 1e-9))`` (Adafactor's preconditioner). An MLP
``39 -> 4 -> 4 -> 2`` (ReLU) gives direction and magnitude; the step is as in :class:`MLPLOpt`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lopt_meta import features
from lopt_meta.base import LearnedOptimizer
from lopt_meta.prng import as_typed_key
from lopt_meta.mlp_lopt import PerParameterMLP, per_parameter_steps

NUM_FEATURES = 28


def decay_to_param(decay):
  return jnp.log(1.0 - decay) / 10.0


def param_to_decay(param):
  return 1.0 - jnp.exp(param * 10.0)


class AdafacState(NamedTuple):
  """Inner state of :class:`AdafacMLPLOpt` (pytrees like the parameters, with a trailing decay
  axis; ``v_row``/``v_col`` are empty ``[0]`` arrays for tensors that are not factored and
  ``v_diag`` is empty for those that are)."""
  momentum: Any
  rms: Any
  v_row: Any
  v_col: Any
  v_diag: Any
  iteration: jax.Array


def _shape(x) -> tuple[int, ...]:
  return tuple(x.shape) if x.ndim else (1,)


def leaf_features(p, g, accumulators, decays):
  """The 28 raw (unnormalized) features of one tensor and its updated accumulators.

  Args:
    p, g: the tensor and its gradient.
    accumulators: ``(momentum, rms, v_row, v_col, v_diag)`` of this tensor.
    decays: ``(momentum [3], rms [1], adafactor [3])`` decays.

  Returns:
    ``(features [size, 28], (momentum, rms, v_row, v_col, v_diag))``.
  """
  m, r, vr, vc, vd = accumulators
  mom_d, rms_d, fac_d = decays
  shape = _shape(p)
  p32 = jnp.reshape(p, shape).astype(jnp.float32)
  g32 = jnp.reshape(g, shape).astype(jnp.float32)
  m = features.ema(mom_d, m, g32)
  r = features.ema(rms_d, r, g32 * g32)
  g_sq = g32 * g32 + 1e-30
  dims = features.factored_dims(shape)
  if dims is not None:
    d1, d0 = dims
    vr = features.ema(fac_d, vr, jnp.mean(g_sq, axis=d0))
    vc = features.ema(fac_d, vc, jnp.mean(g_sq, axis=d1))
    reduced_d1 = d1 - 1 if d1 > d0 else d1
    row_factor = features.safe_rsqrt(vr / (jnp.mean(vr, axis=reduced_d1, keepdims=True) + 1e-9))
    col_factor = features.safe_rsqrt(vc)
    scale = jnp.expand_dims(row_factor, d0) * jnp.expand_dims(col_factor, d1)
    fac_g = g32[..., None] * scale
    row_feat = jnp.broadcast_to(jnp.expand_dims(vr, d0), shape + (3,))
    col_feat = jnp.broadcast_to(jnp.expand_dims(vc, d1), shape + (3,))
    fac_mom = m * scale
  else:
    vd = features.ema(fac_d, vd, g_sq)
    fac_g = g32[..., None] * features.safe_rsqrt(vd + 1e-9)
    row_feat = col_feat = vd
    fac_mom = m * (vd + 1e-6) ** -0.5
  inv_rms = jax.lax.rsqrt(r + 1e-6)
  feats = jnp.concatenate([
      g32[..., None], p32[..., None], m, r, m * inv_rms, inv_rms, fac_g, row_feat, col_feat,
      jax.lax.rsqrt(row_feat + 1e-8), jax.lax.rsqrt(col_feat + 1e-8), fac_mom], axis=-1)
  return jnp.reshape(feats, (-1, NUM_FEATURES)), (m, r, vr, vc, vd)


class AdafacMLPLOpt(LearnedOptimizer):
  """Per-parameter MLP with momentum, RMS and Adafactor features, learnable decays.

  >>> import jax, jax.numpy as jnp
  >>> lopt = AdafacMLPLOpt()
  >>> theta = lopt.init_theta(jax.random.key(0))
  >>> sorted(theta), theta["network"]["w0"].shape
  (['adafactor_decays', 'momentum_decays', 'network', 'rms_decays'], (39, 4))
  """

  name = "adafac"

  def __init__(self, *, hidden_sizes: Sequence[int] = (4, 4),
               momentum_decays: Sequence[float] = (0.9, 0.99, 0.999),
               rms_decays: Sequence[float] = (0.999,),
               adafactor_decays: Sequence[float] = (0.9, 0.99, 0.999),
               exp_mult: float = 0.001, step_mult: float = 0.001):
    if len(rms_decays) != 1:
      raise ValueError("rms_decays: exactly one decay (the feature list has one rms column)")
    if len(momentum_decays) != 3 or len(adafactor_decays) != 3:
      raise ValueError("momentum_decays, adafactor_decays: three decays each (the feature list)")
    self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
    self.momentum_decays = tuple(float(d) for d in momentum_decays)
    self.rms_decays = tuple(float(d) for d in rms_decays)
    self.adafactor_decays = tuple(float(d) for d in adafactor_decays)
    self.exp_mult = float(exp_mult)
    self.step_mult = float(step_mult)
    self.network = PerParameterMLP(hidden_sizes=self.hidden_sizes, outputs=2)

  def config(self) -> dict[str, Any]:
    return {"hidden_sizes": list(self.hidden_sizes), "momentum_decays": list(self.momentum_decays),
            "rms_decays": list(self.rms_decays), "adafactor_decays": list(self.adafactor_decays),
            "exp_mult": self.exp_mult, "step_mult": self.step_mult}

  def init_theta(self, key):
    x = jnp.zeros((1, NUM_FEATURES), jnp.float32)
    timescales = jnp.zeros(len(features.TIMESCALES), jnp.float32)
    net = self.network.init(as_typed_key(key), x, timescales)["params"]
    return {"network": net,
            "momentum_decays": jnp.zeros(3, jnp.float32),
            "rms_decays": jnp.zeros(1, jnp.float32),
            "adafactor_decays": jnp.zeros(3, jnp.float32)}

  def init(self, params, *, num_steps=None):
    del num_steps
    def zeros(p, k):
      return jnp.zeros(_shape(p) + (k,), jnp.float32)

    def rows(p):
      dims = features.factored_dims(_shape(p))
      if dims is None:
        return jnp.zeros((0,), jnp.float32), jnp.zeros((0,), jnp.float32), zeros(p, 3)
      d1, d0 = dims
      shape = _shape(p)
      row = tuple(s for i, s in enumerate(shape) if i != d0) + (3,)
      col = tuple(s for i, s in enumerate(shape) if i != d1) + (3,)
      return jnp.zeros(row, jnp.float32), jnp.zeros(col, jnp.float32), jnp.zeros((0,), jnp.float32)

    fac = jax.tree.map(rows, params)
    pick = lambda i: jax.tree.map(lambda _, f: f[i], params, fac)
    return AdafacState(momentum=jax.tree.map(lambda p: zeros(p, 3), params),
                       rms=jax.tree.map(lambda p: zeros(p, 1), params),
                       v_row=pick(0), v_col=pick(1), v_diag=pick(2),
                       iteration=jnp.zeros((), jnp.int32))

  def _decays(self, theta):
    def learned(init, offset):
      return param_to_decay(decay_to_param(jnp.asarray(init, jnp.float32)) + offset)
    return (learned(self.momentum_decays, theta["momentum_decays"]),
            jnp.clip(learned(self.rms_decays, theta["rms_decays"]), 0.0, 1.0),
            jnp.clip(learned(self.adafactor_decays, theta["adafactor_decays"]), 0.0, 1.0))

  def update(self, theta, grads, state, params, *, loss=None):
    del loss
    mom_d, rms_d, fac_d = self._decays(theta)
    leaves_p, treedef = jax.tree.flatten(params)
    leaves_g = treedef.flatten_up_to(grads)
    parts = [treedef.flatten_up_to(x) for x in (state.momentum, state.rms, state.v_row,
                                                state.v_col, state.v_diag)]
    new = {k: [] for k in ("momentum", "rms", "v_row", "v_col", "v_diag")}
    rows = []
    for p, g, m, r, vr, vc, vd in zip(leaves_p, leaves_g, *parts):
      feats, accums = leaf_features(p, g, (m, r, vr, vc, vd), (mom_d, rms_d, fac_d))
      rows.append(features.second_moment_normalizer(feats, axis=0))
      for k, v in zip(new, accums):
        new[k].append(v)

    x = jnp.concatenate(rows, axis=0)  # [n, 28]
    step = per_parameter_steps(self.network, theta["network"], x,
                               features.tanh_embedding(state.iteration),
                               exp_mult=self.exp_mult, step_mult=self.step_mult)
    updates = features.unflatten(-step, params)
    rebuild = lambda k: jax.tree.unflatten(treedef, new[k])
    return updates, AdafacState(momentum=rebuild("momentum"), rms=rebuild("rms"),
                                v_row=rebuild("v_row"), v_col=rebuild("v_col"),
                                v_diag=rebuild("v_diag"), iteration=state.iteration + 1)
