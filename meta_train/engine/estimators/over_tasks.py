"""One estimate over a distribution of tasks: draw members, estimate on each, combine.

Every member is an ordinary estimator (NRES, PES, ...) on its own system, with its own
persistent workers: a member's particles continue where they stopped when it is drawn again, as
online ES needs. Each outer step draws ``tasks_per_step`` members without replacement and runs
one window of each. Under ``jit`` the draw selects one branch of a ``lax.switch`` whose branches
are the members' windows, so each distinct structure is compiled once (in one program) and only
the drawn members run.

Combining (``normalize="loss"``): member ``i``'s estimate ``g_i`` is weighted by
``w_i = (1/s_i) / mean_j (1/s_j)``, where ``s_i`` is a running mean (decay ``decay``) of the
magnitude of member ``i``'s window meta-loss, taken before this step (its first window's own
loss on its first draw), and the mean runs over the members drawn so far, this step's included;
the estimate is ``(1/k) sum_{drawn} w_i g_i``. A task whose losses are 10x larger thus weighs
10x less, so that no task dominates by scale. With one member ``w = 1`` (not computed): the
estimate is that member's estimate. ``normalize="none"``: ``w_i = 1``.

Metrics: the members' metrics combined (``meta_loss`` the mean of the drawn members',
``grad_variance`` of the combined estimate, counts summed) plus, per member ``NAME``,
``meta_loss/NAME``, ``weight/NAME`` (NaN when it was not drawn) and ``loss_scale/NAME``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from lopt_meta.errors import ConfigError, check_positive_int
from lopt_meta.prng import as_typed_key
from meta_train.engine import maths
from meta_train.engine.estimators.base import Estimator, Metrics
from tasks.distribution import DistributionSystem

PyTree = Any
NORMALIZATIONS = ("loss", "none")
SUMMED = ("nonfinite", "resets", "unroll_steps")


@struct.dataclass
class OverTasksState:
  """The workers of a distribution.

  Attributes:
    members: each member estimator's worker state, in member order.
    loss_scale: ``float32 [M]``, each member's running mean meta-loss magnitude (0: not drawn).
    draws: ``int32 [M]``, how often each member has been drawn.
  """
  members: tuple
  loss_scale: jax.Array
  draws: jax.Array


class OverTasks(Estimator):
  """Estimates over a distribution of tasks (see the module docstring).

  Args:
    members: ``{name: estimator}``, one estimator per task (theta of the same structure).
    tasks_per_step: ``k``, members drawn per outer step.
    normalize: ``"loss"`` or ``"none"``.
    decay: the running mean's decay per draw.
    name: the distribution's name.
  """

  name = "over_tasks"

  def __init__(self, members: Mapping[str, Estimator], *, tasks_per_step: int = 1,
               normalize: str = "loss", decay: float = 0.9, name: str = "distribution"):
    if not members:
      raise ConfigError("members", "a distribution needs at least one task")
    self.members = dict(members)
    self.names = tuple(self.members)
    check_positive_int("tasks_per_step", tasks_per_step)
    if tasks_per_step > len(self.members):
      raise ConfigError("tasks_per_step", f"must be at most the number of members "
                        f"({len(self.members)}); got {tasks_per_step}")
    if normalize not in NORMALIZATIONS:
      raise ConfigError("normalize", f"unknown normalize {normalize!r}; valid: "
                        f"{', '.join(NORMALIZATIONS)}")
    self.tasks_per_step, self.normalize, self.decay = tasks_per_step, normalize, float(decay)
    first = next(iter(self.members.values()))
    self.num_particles, self.unroll_length = first.num_particles, first.unroll_length
    self.system = DistributionSystem({n: e.system for n, e in self.members.items()}, name)
    super().__init__()

  @property
  def mesh(self):
    """The members' mesh (every member's particles are split over the same devices)."""
    return next(iter(self.members.values())).mesh

  def worker_shardings(self, ws_like, split, replicated):
    """Each member's workers as that member shards them; the per-task counters replicated."""
    out = jax.tree.map(lambda _: replicated, ws_like)
    return out.replace(members=tuple(e.worker_shardings(w, split, replicated)
                                     for e, w in zip(self.members.values(), ws_like.members)))

  @property
  def steps_per_estimate(self) -> int:
    return max(e.steps_per_estimate for e in self.members.values()) * self.tasks_per_step

  def burn_in_steps(self, ws: OverTasksState | None) -> int:
    if ws is None:
      return 0
    return sum(e.burn_in_steps(w) for e, w in zip(self.members.values(), ws.members))

  def init_fn(self, key, theta, data) -> OverTasksState:
    keys = jax.random.split(as_typed_key(key), len(self.members))
    members = tuple(e.init_fn(k, theta, d) for e, k, d in
                    zip(self.members.values(), keys, data))
    m = len(self.members)
    return OverTasksState(members=members, loss_scale=jnp.zeros((m,), jnp.float32),
                          draws=jnp.zeros((m,), jnp.int32))

  def estimate_fn(self, key, theta, ws: OverTasksState, data):
    pick_key, window_key = jax.random.split(as_typed_key(key))
    m, k = len(self.members), self.tasks_per_step
    picks = (jnp.zeros((1,), jnp.int32) if m == 1 else
             jax.random.choice(pick_key, m, (k,), replace=False).astype(jnp.int32))
    members, grads, parts = ws.members, [], []
    for j, window in enumerate(jax.random.split(window_key, k)):
      grad, members, metrics = self._window(picks[j], window, theta, members, data)
      grads.append(grad)
      parts.append(metrics)
    losses = jnp.stack([jnp.abs(p["meta_loss"]).astype(jnp.float32) for p in parts])
    weights = self._weights(picks, losses, ws)
    if m > 1:  # with one member the weight is 1
      grads = [jax.tree.map(lambda g, w=weights[j]: g * w, g) for j, g in enumerate(grads)]
    grad = grads[0] if k == 1 else jax.tree.map(lambda *g: sum(g) / k, *grads)
    first = ws.draws[picks] == 0
    scale = ws.loss_scale.at[picks].set(jnp.where(
        first, losses, self.decay * ws.loss_scale[picks] + (1 - self.decay) * losses))
    ws = ws.replace(members=members, loss_scale=scale, draws=ws.draws.at[picks].add(1))
    return grad, ws, self._metrics(grad, parts, picks, weights, ws)

  def _window(self, index, key, theta, members, data):
    """Member ``index``'s window: a ``lax.switch`` whose branches are the members' estimators,
    each advancing its own workers in the tuple ``members``."""
    def branch(i, estimator):
      def run(members):
        grad, w, metrics = estimator.estimate_fn(key, theta, members[i], data[i])
        return grad, members[:i] + (w,) + members[i + 1:], {n: metrics[n] for n in sorted(metrics)}
      return run
    branches = [branch(i, e) for i, e in enumerate(self.members.values())]
    if len(branches) == 1:
      return branches[0](members)
    return jax.lax.switch(index, branches, members)

  def _weights(self, picks, losses, ws: OverTasksState) -> jax.Array:
    """``float32 [k]``: the drawn members' weights ``(1/s_i) / mean_seen (1/s_j)``, with ``s``
    the running scales before this step (a member drawn for the first time: its loss now) and
    the mean over the members drawn so far, this step's included."""
    k = picks.shape[0]
    if self.normalize == "none" or len(self.members) == 1:
      return jnp.ones((k,), jnp.float32)
    first = ws.draws[picks] == 0
    before = jnp.where(first, losses, ws.loss_scale[picks])
    seen = (ws.draws > 0).at[picks].set(True)
    scale = jnp.where(ws.draws > 0, ws.loss_scale, 1.0).at[picks].set(before)
    inverse = 1.0 / jnp.maximum(scale, 1e-12)
    mean_inverse = jnp.sum(jnp.where(seen, inverse, 0.0)) / jnp.sum(seen)
    return inverse[picks] / mean_inverse

  def _metrics(self, grad, parts, picks, weights, ws) -> Metrics:
    """The combined metrics and the per-member ones (NaN for members not drawn)."""
    k = len(parts)
    out = {name: sum(p[name] for p in parts) for name in SUMMED}
    out["meta_loss"] = sum(p["meta_loss"] for p in parts) / k
    out["grad_norm"] = maths.global_norm(grad)
    if len(self.names) == 1:
      out["grad_variance"] = parts[0]["grad_variance"]
    else:
      out["grad_variance"] = sum(weights[j] ** 2 * p["grad_variance"]
                                 for j, p in enumerate(parts)) / k ** 2
    nan = jnp.full((len(self.names),), jnp.nan, jnp.float32)
    drawn_loss = nan.at[picks].set(jnp.stack([p["meta_loss"] for p in parts]))
    drawn_weight = nan.at[picks].set(weights)
    for i, name in enumerate(self.names):
      out[f"meta_loss/{name}"] = drawn_loss[i]
      out[f"weight/{name}"] = drawn_weight[i]
      out[f"loss_scale/{name}"] = ws.loss_scale[i]
    return out

  def __repr__(self):
    inner = next(iter(self.members.values()))
    return (f"OverTasks({self.system.name!r}, {len(self.members)} tasks, "
            f"tasks_per_step={self.tasks_per_step}, normalize={self.normalize!r}, "
            f"each {type(inner).__name__}({inner._config()}))")
