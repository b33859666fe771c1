"""A learned optimizer anchored on Adam: muP-scaled Adam steps times a bounded, learned,
progress-aware modulation.

Harrison et al. 2022 (arXiv:2209.11208: a learned step added to a nominal one is stable and
generalizes), muLO (Therien et al. 2024, arXiv:2406.00153: per-layer muP step scales transfer
across widths) and Celo (Moudgil et al. 2025, arXiv:2501.12670: a learned rate multiplier fed
t/T and loss trends, RMS-normalized directions). Per step, with ``g`` the flat gradient and
``p`` the flat parameters of ``S`` tensors:

1. **Adam** (``optax.scale_by_adam``'s arithmetic): ``mu <- b1 mu + (1 - b1) g``,
   ``nu <- b2 nu + (1 - b2) g^2``, ``a = mu_hat / (sqrt(nu_hat) + eps)``.
2. **muP scale** of tensor ``i`` (:func:`mup_scales`): ``min(1, base_fan_in / fan_in_i)`` for a
   tensor of rank >= 2, whose fan-in is the product of all its dimensions but the last (a Dense
   kernel ``[in, out]``: ``in``; a convolution ``[kh, kw, c_in, c_out]``: ``kh kw c_in``; each
   gate kernel of Flax's LSTM cell, input-to-hidden ``[in, H]`` and hidden-to-hidden ``[H, H]``:
   ``in`` and ``H``; the autoencoder's Dense layers as any Dense layer), and 1 for vectors and
   scalars (biases, scales). The optimizer sees only shapes, so the input layer is scaled by its
   fan-in like a hidden one (muP leaves it at 1): a wide input (784 pixels) is slowed, a narrow
   one (8x8 digits, a 30-feature table) is not sped up.
3. **Context.** Global features (``[11]``): the progress ``x = t / T`` (``t`` steps taken, ``T``
   the ``num_steps`` given to :meth:`init`) as ``tanh(x / s)`` for ``s`` in (0.03, 0.1, 0.3, 1)
   and ``tanh((1 - x) / s)`` for ``s`` in (0.03, 0.1, 0.3), ``tanh(t / 10)``, ``tanh(t / 100)``,
   and the loss trend ``log(L_fast / L_slow)`` and progress ``log(L_slow / L_0)`` (EMAs of the
   ``loss`` passed to :meth:`update`, decays 0.9 and 0.99, bias-corrected; ``L_0`` the first
   loss), clipped. Per-tensor features (``[S, 5]``): ``log(fan_in) / log(1024)``, rank <= 1,
   rank >= 3, ``log rms(a_i)`` (Adam's signal-to-noise ratio) and ``log10`` of the base step's
   RMS over the parameters' RMS, clipped and scaled to about unit size.
4. **Rate multiplier** of tensor ``i``: ``exp(clip(s_i, -max_log_multiplier, max_log_multiplier))``,
   ``s_i`` an MLP ``16 -> 16 -> 1`` of the global and tensor ``i``'s features.
5. **Per-parameter correction**: ``d`` from an MLP ``5 -> 8 -> 8 -> 1`` of each parameter's
   ``[g, mu, a, p, sqrt(nu_hat)]`` (each RMS-normalized over its tensor) with the global
   features as its first layer's offset, bounded per tensor:
   ``c = correction * rms_i(a) * d * tanh(r) / r``, ``r = rms_i(d)`` (``rms_i(c) <= correction
   rms_i(a)``).

6. **Schedule** (``schedule=True``, a fixed prior, not learned): the base rate times
   ``w(t)``, the warmup + cosine of ``meta-train bench``'s ``adam_wc`` over the ``T`` told to
   :meth:`init`: ``w = k / K`` for the step ``k < K`` (``k`` steps taken before this one,
   ``K = max(1, floor(warmup T))``), then ``0.5 (1 + cos(pi min(1, (k - K) / max(1, T - K))))``.
   With ``schedule=False``, or where ``T`` is unknown, ``w = 1``.

``step_i = lr w mup_i exp(clip(s_i)) (a + c)`` and ``p <- p - step``. Whatever theta is, every
tensor's step has an RMS within ``exp(max_log_multiplier) (1 + correction)`` of its base step's.
:meth:`init_theta` zeroes both networks' last layers: ``s = 0`` and ``c = 0``, so **before
meta-training the optimizer is exactly its base** (Adam at ``lr``, muP-scaled), bit for bit.

Without ``num_steps`` (``None`` or 0) the progress features stay at their value for ``t = 0``:
the optimizer applies its start-of-training modulation throughout, with no schedule to the end.
The constructor's switches remove one part each (for ablations): ``mup=False`` (all scales 1),
``multiplier=False`` (``s = 0``), ``correction=0`` (no per-parameter network), ``progress=False``
(the global features are zero); ``schedule=True`` adds one (item 6).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lopt_meta import features, kernels
from lopt_meta.base import LearnedOptimizer
from lopt_meta.prng import as_typed_key

PROGRESS_SCALES = (0.03, 0.1, 0.3, 1.0)
REMAINING_SCALES = (0.03, 0.1, 0.3)
STEP_SCALES = (10.0, 100.0)
LOSS_DECAYS = (0.9, 0.99)
NUM_GLOBAL = len(PROGRESS_SCALES) + len(REMAINING_SCALES) + len(STEP_SCALES) + 2
NUM_TENSOR = 5
NUM_PARAM = 5
_TINY = 1e-30


def fan_in(shape: tuple[int, ...]) -> int:
  """The fan-in of a tensor: the product of all its dimensions but the last (1 for rank <= 1)."""
  return int(np.prod(shape[:-1])) if len(shape) >= 2 else 1


def mup_scales(layout: features.FlatLayout, base_fan_in: float) -> np.ndarray:
  """``[S]`` float32: ``min(1, base_fan_in / fan_in)`` for tensors of rank >= 2, 1 otherwise."""
  return np.asarray([min(1.0, base_fan_in / fan_in(s)) if len(s) >= 2 else 1.0
                     for s in layout.shapes], np.float32)


def _segment_ids(layout: features.FlatLayout) -> np.ndarray:
  return np.repeat(np.arange(len(layout.sizes), dtype=np.int32), layout.sizes)


def _tensor_mean(x: jax.Array, layout: features.FlatLayout) -> jax.Array:
  """``[S]``: the mean of ``x: [n]`` over each tensor."""
  sums = jax.ops.segment_sum(x, _segment_ids(layout), num_segments=len(layout.sizes),
                             indices_are_sorted=True)
  return sums / np.asarray(layout.sizes, np.float32)


def _expand(v: jax.Array, layout: features.FlatLayout) -> jax.Array:
  """``[n]``: each tensor's entry of ``v: [S]`` on every one of its parameters."""
  return jnp.repeat(v, np.asarray(layout.sizes), total_repeat_length=layout.total)


class AnchoredAdamState(NamedTuple):
  """Inner state of :class:`AnchoredAdam`.

  Attributes:
    mu: ``[n]`` float32, Adam's first moment of the flattened parameters.
    nu: ``[n]`` float32, Adam's second moment.
    count: ``[] int32``, steps taken.
    num_steps: ``[] float32``, the horizon ``T`` the optimizer was told (0: unknown).
    loss_ema: ``[2]`` float32, EMAs of the loss (decays :data:`LOSS_DECAYS`, not bias-corrected).
    loss_count: ``[] int32``, losses seen.
    loss_start: ``[] float32``, the first loss seen (0 before).
  """
  mu: jax.Array
  nu: jax.Array
  count: jax.Array
  num_steps: jax.Array
  loss_ema: jax.Array
  loss_count: jax.Array
  loss_start: jax.Array


class _Dense(nn.Module):
  """A ReLU MLP whose last layer starts at zero (so its output is 0 before meta-training)."""
  hidden: tuple[int, ...]

  @nn.compact
  def __call__(self, x):
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(1, kernel_init=nn.initializers.zeros_init())(x)[..., 0]


class AnchoredAdam(LearnedOptimizer):
  """Adam at a fixed base rate, muP-scaled per tensor, times a bounded learned modulation.

  Args:
    learning_rate: the base rate ``lr``.
    b1, b2, eps: Adam's constants (optax's defaults).
    base_fan_in: the fan-in at which a weight's muP scale is 1.
    max_log_multiplier: ``a``: the learned rate multiplier is in ``[exp(-a), exp(a)]``.
    correction: the largest RMS of the per-parameter correction relative to Adam's direction
      (0: no per-parameter network).
    mup, multiplier, progress: the switches of the module docstring.
    schedule: whether the base rate follows the warmup + cosine of item 6 over ``num_steps``.
    warmup: the schedule's warmup, a fraction of ``num_steps`` in ``[0, 1)``.
    tensor_hidden, param_hidden: hidden widths of the two networks.

  >>> import jax, jax.numpy as jnp
  >>> lopt = AnchoredAdam()
  >>> theta = lopt.init_theta(jax.random.key(0))
  >>> sum(x.size for x in jax.tree.leaves(theta))
  506
  >>> params = {"w": jnp.ones((100, 2)), "b": jnp.zeros(2)}
  >>> state = lopt.init(params, num_steps=1000)
  >>> updates, state = lopt.update(theta, params, state, params, loss=jnp.float32(2.3))
  >>> [round(float(u), 6) for u in updates["b"]]  # a zero gradient: no step
  [-0.0, -0.0]
  >>> [round(float(u), 6) for u in updates["w"][0]]  # Adam's first step, -lr sign(g), at 64/100
  [-0.00192, -0.00192]
  """

  name = "anchored_adam"

  def __init__(self, *, learning_rate: float = 3e-3, b1: float = 0.9, b2: float = 0.999,
               eps: float = 1e-8, base_fan_in: float = 64.0, max_log_multiplier: float = 2.0,
               correction: float = 0.5, mup: bool = True, multiplier: bool = True,
               progress: bool = True, schedule: bool = False, warmup: float = 0.05,
               tensor_hidden: tuple[int, ...] = (16,),
               param_hidden: tuple[int, ...] = (8, 8)):
    for field, value in (("learning_rate", learning_rate), ("base_fan_in", base_fan_in)):
      if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
        raise ValueError(f"{field}: must be a positive finite number; got {value!r}")
    if not max_log_multiplier >= 0:
      raise ValueError(f"max_log_multiplier: must be >= 0; got {max_log_multiplier!r}")
    if not correction >= 0:
      raise ValueError(f"correction: must be >= 0; got {correction!r}")
    if not (isinstance(warmup, (int, float)) and 0 <= warmup < 1):
      raise ValueError(f"warmup: must be in [0, 1); got {warmup!r}")
    if len(tuple(param_hidden)) != 2:
      raise ValueError(f"param_hidden: two hidden widths; got {param_hidden!r}")
    self.learning_rate, self.b1, self.b2, self.eps = (float(learning_rate), float(b1), float(b2),
                                                      float(eps))
    self.base_fan_in = float(base_fan_in)
    self.max_log_multiplier = float(max_log_multiplier)
    self.correction = float(correction)
    self.mup, self.multiplier, self.progress = bool(mup), bool(multiplier), bool(progress)
    self.schedule, self.warmup = bool(schedule), float(warmup)
    self.tensor_hidden = tuple(int(h) for h in tensor_hidden)
    self.param_hidden = tuple(int(h) for h in param_hidden)
    self._tensor_net = _Dense(self.tensor_hidden)

  def config(self) -> dict[str, Any]:
    return {"learning_rate": self.learning_rate, "b1": self.b1, "b2": self.b2, "eps": self.eps,
            "base_fan_in": self.base_fan_in, "max_log_multiplier": self.max_log_multiplier,
            "correction": self.correction, "mup": self.mup, "multiplier": self.multiplier,
            "progress": self.progress, "schedule": self.schedule, "warmup": self.warmup,
            "tensor_hidden": list(self.tensor_hidden),
            "param_hidden": list(self.param_hidden)}

  # ---- theta ----

  def init_theta(self, key):
    k_tensor, k_param = jax.random.split(as_typed_key(key))
    theta = {}
    if self.multiplier:
      theta["tensor"] = self._tensor_net.init(
          k_tensor, jnp.zeros((1, NUM_GLOBAL + NUM_TENSOR), jnp.float32))["params"]
    if self.correction > 0:
      h1, h2 = self.param_hidden
      ks = jax.random.split(k_param, 3)
      lecun = nn.initializers.lecun_normal()
      theta["param"] = {
          "w0": lecun(ks[0], (NUM_PARAM + NUM_GLOBAL, h1), jnp.float32),
          "b0": jnp.zeros((h1,), jnp.float32),
          "w1": lecun(ks[1], (h1, h2), jnp.float32), "b1": jnp.zeros((h2,), jnp.float32),
          "w2": jnp.zeros((h2, 1), jnp.float32), "b2": jnp.zeros((1,), jnp.float32)}
    return theta

  # ---- state ----

  def init(self, params, *, num_steps=None):
    n = features.FlatLayout.of(params).total
    zeros = jnp.zeros((n,), jnp.float32)
    return AnchoredAdamState(
        mu=zeros, nu=zeros, count=jnp.zeros((), jnp.int32),
        num_steps=jnp.asarray(0 if num_steps is None else num_steps, jnp.float32),
        loss_ema=jnp.zeros((len(LOSS_DECAYS),), jnp.float32),
        loss_count=jnp.zeros((), jnp.int32), loss_start=jnp.zeros((), jnp.float32))

  # ---- the step ----

  def update(self, theta, grads, state, params, *, loss=None):
    layout = features.FlatLayout.of(params)
    g, p = features.flatten(grads), features.flatten(params)
    # Adam, in optax.scale_by_adam's order and constants.
    mu = (1.0 - self.b1) * g + self.b1 * state.mu
    nu = (1.0 - self.b2) * jnp.square(g) + self.b2 * state.nu
    count = state.count + 1
    mu_hat = mu / (1.0 - self.b1 ** count).astype(mu.dtype)
    nu_hat = nu / (1.0 - self.b2 ** count).astype(nu.dtype)
    adam = mu_hat / (jnp.sqrt(nu_hat) + self.eps)

    scales = mup_scales(layout, self.base_fan_in) if self.mup else np.ones(
        len(layout.sizes), np.float32)
    factor = jnp.asarray(-self.learning_rate * scales)  # [S]: -lr mup_i, float32
    if self.schedule:
      factor = factor * self._schedule(state.count, state.num_steps)
    direction = adam
    loss_ema, loss_count, loss_start = self._loss_statistics(state, loss)
    if self.multiplier or self.correction > 0:
      context = self._global_features(state, loss_ema, loss_count, loss_start)
      rms_adam = jnp.sqrt(_tensor_mean(jnp.square(adam), layout))
      if self.correction > 0:
        direction = direction + self._correction(theta["param"], layout, context, g, mu, adam, p,
                                                 jnp.sqrt(nu_hat), rms_adam)
      if self.multiplier:
        tensor = self._tensor_features(layout, scales, rms_adam, p)
        x = jnp.concatenate([jnp.broadcast_to(context, (len(layout.sizes), NUM_GLOBAL)), tensor],
                            axis=1)
        s = self._tensor_net.apply({"params": theta["tensor"]}, x)
        a = self.max_log_multiplier
        factor = factor * jnp.exp(jnp.clip(s, -a, a))
    step = direction * _expand(factor, layout)
    updates = features.unflatten(step, params)
    return updates, AnchoredAdamState(mu=mu, nu=nu, count=count, num_steps=state.num_steps,
                                      loss_ema=loss_ema, loss_count=loss_count,
                                      loss_start=loss_start)

  def _schedule(self, taken, num_steps) -> jax.Array:
    """``[]`` float32: ``w`` of item 6 for the step after ``taken`` steps of ``num_steps``."""
    k = taken.astype(jnp.float32)
    known = num_steps > 0
    total = jnp.where(known, num_steps, 1.0)
    warm = jnp.maximum(1.0, jnp.floor(self.warmup * total))
    frac = jnp.clip((k - warm) / jnp.maximum(1.0, total - warm), 0.0, 1.0)
    w = jnp.where(k < warm, k / warm, 0.5 * (1.0 + jnp.cos(jnp.pi * frac)))
    return jnp.where(known, w, 1.0).astype(jnp.float32)

  def _loss_statistics(self, state, loss):
    """The loss EMAs, count and first loss after this step's ``loss`` (unchanged without one)."""
    if loss is None:
      return state.loss_ema, state.loss_count, state.loss_start
    loss = jnp.asarray(loss, jnp.float32)
    finite = jnp.isfinite(loss)
    decays = jnp.asarray(LOSS_DECAYS, jnp.float32)
    ema = jnp.where(finite, decays * state.loss_ema + (1.0 - decays) * loss, state.loss_ema)
    start = jnp.where((state.loss_count == 0) & finite, loss, state.loss_start)
    return ema, state.loss_count + finite.astype(jnp.int32), start

  def _global_features(self, state, loss_ema, loss_count, loss_start) -> jax.Array:
    """``[NUM_GLOBAL]``: progress, step and loss features (zeros with ``progress=False``)."""
    if not self.progress:
      return jnp.zeros((NUM_GLOBAL,), jnp.float32)
    t = state.count.astype(jnp.float32)
    known = state.num_steps > 0
    x = jnp.where(known, jnp.clip(t / jnp.where(known, state.num_steps, 1.0), 0.0, 1.0), 0.0)
    progress = [jnp.tanh(x / s) for s in PROGRESS_SCALES]
    remaining = [jnp.tanh((1.0 - x) / s) for s in REMAINING_SCALES]
    steps = [jnp.tanh(t / s) for s in STEP_SCALES]
    seen = loss_count > 0
    corrected = loss_ema / jnp.maximum(
        1.0 - jnp.asarray(LOSS_DECAYS, jnp.float32) ** loss_count.astype(jnp.float32), _TINY)
    logs = jnp.log(jnp.maximum(corrected, _TINY))
    trend = jnp.where(seen, jnp.clip(logs[0] - logs[1], -1.0, 1.0), 0.0)
    start = jnp.log(jnp.maximum(loss_start, _TINY))
    drop = jnp.where(seen, jnp.clip(logs[1] - start, -6.0, 1.0) / 3.0, 0.0)
    return jnp.stack(progress + remaining + steps + [trend, drop]).astype(jnp.float32)

  def _tensor_features(self, layout, scales, rms_adam, p) -> jax.Array:
    """``[S, NUM_TENSOR]``: log fan-in, rank flags, Adam's SNR, the relative step size."""
    fans = np.asarray([math.log(fan_in(s)) / math.log(1024.0) for s in layout.shapes], np.float32)
    vector = np.asarray([len(s) <= 1 for s in layout.shapes], np.float32)
    conv = np.asarray([len(s) >= 3 for s in layout.shapes], np.float32)
    snr = jnp.clip(jnp.log(jnp.maximum(rms_adam, _TINY)), -10.0, 0.0) / 5.0
    rms_p = jnp.sqrt(_tensor_mean(jnp.square(p), layout))
    relative = jnp.log10(jnp.maximum(self.learning_rate * scales * rms_adam, _TINY)
                         / jnp.maximum(rms_p, 1e-8))
    relative = jnp.clip(relative, -8.0, 0.0) / 4.0 + 1.0
    return jnp.stack([jnp.asarray(fans), jnp.asarray(vector), jnp.asarray(conv), snr, relative],
                     axis=1)

  def _correction(self, net, layout, context, g, mu, adam, p, sqrt_nu, rms_adam) -> jax.Array:
    """``[n]``: the bounded per-parameter correction ``c`` (module docstring, item 5)."""
    x = jnp.stack([g, mu, adam, p, sqrt_nu], axis=1)
    x = features.segment_normalize(x, layout)
    c0 = context @ net["w0"][NUM_PARAM:] + net["b0"]
    zero = jnp.zeros_like(net["w2"])
    d = kernels.per_parameter_mlp(
        x, c0, net["w0"][:NUM_PARAM], net["w1"], net["b1"],
        jnp.concatenate([net["w2"], zero], axis=1),
        jnp.concatenate([net["b2"], jnp.zeros_like(net["b2"])]), exp_mult=0.0, step_mult=1.0)
    r = jnp.sqrt(_tensor_mean(jnp.square(d), layout))
    bound = jnp.where(r > 1e-12, jnp.tanh(r) / jnp.where(r > 1e-12, r, 1.0), 1.0)
    return d * _expand(self.correction * rms_adam * bound, layout)
