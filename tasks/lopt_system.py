"""Training an inner task with a learned optimizer, as an unrolled system over theta.

State of one particle: the inner parameters, the optimizer's state, the task's state (data
order, curriculum), the inner step, the episode's length, which task of a family it trains, and
(for the telescoping meta-loss) the previous evaluation. One system step is one inner training
step; its per-step meta-loss ``L_t`` is one of:

* ``"train"``: the training loss of the step's batch, at the parameters before the update;
* ``"outer_valid"``: the loss of the updated parameters on a fresh ``outer_valid`` batch;
* ``"telescoping"``: ``l_{t+1} - l_t`` with ``l`` the loss of the parameters on a fresh training
  batch, so that the episode's sum telescopes to ``l_T - l_0`` and its gradient targets the final
  training loss (ES-Single paper, "telescoping sums").

Every loss goes through the task's normalizer (clipped to ``[0, 1.5 ln(classes)]``, NaN to the
bound), so a diverging inner run costs a bounded meta-loss and never a NaN.

Truncation schedules: ``"constant"`` (every episode lasts ``horizon`` steps) or ``"log_uniform"``
(each episode draws its length from a log-uniform distribution over ``[min_horizon, horizon]``).
A family of tasks (several tasks with parameters of the same structure) draws one per episode;
its steps run under ``lax.switch``, which under ``vmap`` computes every task's branch: keep
families small.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt_meta.base import LearnedOptimizer
from lopt_meta.errors import ConfigError, check_positive_int
from lopt_meta.prng import as_typed_key
from tasks.base import UnrolledSystem
from tasks.inner import InnerTask

META_LOSSES = ("train", "outer_valid", "telescoping")
TRUNCATIONS = ("constant", "log_uniform")


class LoptState(NamedTuple):
  """One particle's inner training run (see the module docstring)."""
  params: Any
  opt_state: Any
  task_state: Any
  step: jax.Array  # shape=(), dtype=int32
  length: jax.Array  # shape=(), dtype=int32
  task_index: jax.Array  # shape=(), dtype=int32
  previous: jax.Array  # shape=(), dtype=float32: last evaluation (telescoping meta-loss)


def _check_system_options(family, *, horizon, meta_loss, truncation, min_horizon) -> int | None:
  """One ConfigError naming the field for a bad option or task family; returns ``min_horizon``
  with its default filled in."""
  if not family:
    raise ConfigError("task", "a task family needs at least one task")
  if meta_loss not in META_LOSSES:
    raise ConfigError("meta_loss", f"unknown meta_loss {meta_loss!r}; valid: {', '.join(META_LOSSES)}")
  if truncation not in TRUNCATIONS:
    raise ConfigError("truncation", f"unknown truncation {truncation!r}; valid: {', '.join(TRUNCATIONS)}")
  check_positive_int("horizon", horizon, "inner steps per episode")
  if truncation == "log_uniform":
    min_horizon = max(1, horizon // 10) if min_horizon is None else min_horizon
    if not (isinstance(min_horizon, int) and 1 <= min_horizon <= horizon):
      raise ConfigError("min_horizon", f"must be an int in [1, horizon={horizon}]; got {min_horizon!r}")
  elif min_horizon is not None and min_horizon != horizon:
    raise ConfigError("min_horizon", "applies only to truncation='log_uniform'")
  structures = {jax.tree.structure(jax.eval_shape(t.init_params, jax.random.key(0))) for t in family}
  if len(structures) > 1:
    raise ConfigError("task", "a task family needs tasks whose parameters share one structure; "
                      f"got {[t.name for t in family]}")
  num_classes = {t.num_classes for t in family}
  if len(num_classes) > 1:
    raise ConfigError("task", "a task family needs tasks with the same number of classes")
  return min_horizon


def _switch(index, branches, *operands):
  """``branches[index](*operands)``: ``lax.switch``, or the one branch of a single-task family."""
  if len(branches) == 1:
    return branches[0](*operands)
  return jax.lax.switch(index, branches, *operands)


def learned_optimizer_system(task: InnerTask | Sequence[InnerTask], lopt: LearnedOptimizer, *,
                             horizon: int = 1000, meta_loss: str = "train",
                             truncation: str = "constant", min_horizon: int | None = None,
                             theta0: Any = None) -> UnrolledSystem:
  """The unrolled system whose theta is ``lopt``'s meta-parameters.

  Args:
    task: an inner task, or a family (sequence) of tasks whose parameters share one structure.
    lopt: the learned optimizer.
    horizon: ``T``, inner steps per episode (the longest, for ``log_uniform``).
    meta_loss: one of :data:`META_LOSSES`.
    truncation: one of :data:`TRUNCATIONS`.
    min_horizon: shortest episode for ``log_uniform`` (default ``horizon // 10``).
    theta0: initial meta-parameters (default ``lopt.init_theta(jax.random.key(0))``).
  """
  family = tuple(task) if isinstance(task, (list, tuple)) else (task,)
  min_horizon = _check_system_options(family, horizon=horizon, meta_loss=meta_loss,
                                      truncation=truncation, min_horizon=min_horizon)

  def evaluate(index, params, key, data, split):
    """Normalized loss of ``params`` on a random batch of ``split`` of the episode's task."""
    return _switch(index, [lambda p, k, d, i=i, t=t: t.normalize(t.loss(p, t.eval_batch(d[i], split, k)))
                          for i, t in enumerate(family)], params, key, data)

  def init(key, data):
    k_index, k_len, k_params, k_state, k_eval = jax.random.split(as_typed_key(key), 5)
    index = jax.random.randint(k_index, (), 0, len(family))
    params = _switch(index, [lambda k, t=t: t.init_params(k) for t in family], k_params)
    task_state = _switch(index, [lambda k, t=t: t.init_state(k) for t in family], k_state)
    if truncation == "log_uniform":
      u = jax.random.uniform(k_len)
      length = jnp.exp(math.log(min_horizon) + u * (math.log(horizon) - math.log(min_horizon)))
      length = jnp.clip(jnp.round(length), min_horizon, horizon).astype(jnp.int32)
    else:
      length = jnp.asarray(horizon, jnp.int32)
    previous = jnp.zeros((), jnp.float32)
    if meta_loss == "telescoping":
      previous = evaluate(index, params, k_eval, data, "train")
    return LoptState(params=params, opt_state=lopt.init(params), task_state=task_state,
                     step=jnp.zeros((), jnp.int32), length=length, task_index=index,
                     previous=previous)

  def step(theta, state, key, data):
    k_batch, k_eval = jax.random.split(key)

    def train(params, task_state, k):
      def branch(i, t):
        def run(params, task_state, k):
          batch, task_state = t.train_batch(data[i], task_state, k)
          loss, grads = jax.value_and_grad(t.loss)(params, batch)
          return loss, grads, t.update_state(task_state, loss)
        return run
      return _switch(state.task_index, [branch(i, t) for i, t in enumerate(family)], params,
                    task_state, k)

    loss, grads, task_state = train(state.params, state.task_state, k_batch)
    updates, opt_state = lopt.update(theta, grads, state.opt_state, state.params, loss=loss)
    params = optax.apply_updates(state.params, updates)
    previous = state.previous
    if meta_loss == "train":
      meta = _switch(state.task_index, [lambda l, t=t: t.normalize(l) for t in family], loss)
    elif meta_loss == "outer_valid":
      meta = evaluate(state.task_index, params, k_eval, data, "outer_valid")
    else:
      current = evaluate(state.task_index, params, k_eval, data, "train")
      meta, previous = current - state.previous, current
    new = LoptState(params=params, opt_state=opt_state, task_state=task_state,
                    step=state.step + 1, length=state.length, task_index=state.task_index,
                    previous=previous)
    return new, meta

  names = "+".join(t.name for t in family)
  return UnrolledSystem(
      init=init, step=step, horizon=horizon,
      theta0=lopt.init_theta(jax.random.key(0)) if theta0 is None else theta0,
      name=f"{names}/{lopt.name}", data=tuple(t.data for t in family),
      episode_length=(lambda s: s.length) if truncation == "log_uniform" else None,
      min_horizon=min_horizon if truncation == "log_uniform" else None)
