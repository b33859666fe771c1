"""Inner training: the one core of every system whose state is a network being trained.

A learned optimizer meta-trained on a task (theta: its meta-parameters) and an optax loop whose
hyperparameters are tuned (theta: the unconstrained hyperparameters) are the same unrolled system
with a different optimizer. :func:`inner_training` builds its two pure functions::

    init, step = inner_training(task, optimizer, horizon=T, meta_loss="train")
    state = init(key, data)                      # data: one entry per task of the family
    state, L_t = step(arg, state, key, data)     # arg: theta, or the hyperparameters

where ``optimizer`` has ``init(params, num_steps=T) -> opt_state`` (``T``: the episode's
length) and ``update(arg, grads, opt_state, params,
loss=loss) -> (updates, opt_state)`` (:class:`InnerOptimizer`). One step draws the task's next
training batch, takes the gradient of its loss at the current parameters and applies the
optimizer's update. Its per-step meta-loss ``L_t`` (:data:`META_LOSSES`), after the task's
normalizer (clipped to ``[0, 1.5 ln classes]``, NaN to the bound, so a diverging run costs a
bounded loss and never a NaN):

* ``"train"``: the training loss of the step's batch, at the parameters before the update;
* ``"valid"``: the loss of the updated parameters on a random ``outer_valid`` batch (the sum of
  validation losses: the ES-Single paper's hyperparameter objective);
* ``"telescoping"``: ``l_t - l_{t-1}`` with ``l_t`` the loss of the updated parameters on a batch
  of ``fixed_batch_size`` training examples drawn at the start of the episode and kept, and
  ``l_{-1} = 0``: the episode's sum is the final loss ``l_{T-1}`` (ES-Single paper, eq. 6).

A **family** (several tasks whose parameters share one structure) draws one task per episode and
runs its steps under ``lax.switch`` (under ``vmap`` every branch is computed: keep families
small; tasks of different structures belong in a task distribution, :mod:`tasks.distribution`).
**Truncation** (:data:`TRUNCATIONS`): every episode lasts ``horizon`` steps, or draws its length
log-uniformly in ``[min_horizon, horizon]``. **Augmentations** (:class:`Augmentation`, drawn per
episode, for optimizers that generalize): a random per-tensor reparameterization of the
parameters, and label noise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import optax

from lopt_meta.errors import ConfigError, check_positive_int
from lopt_meta.prng import as_typed_key
from tasks.inner_task import InnerTask

META_LOSSES = ("train", "valid", "telescoping")
TRUNCATIONS = ("constant", "log_uniform")
PyTree = Any


class InnerOptimizer(Protocol):
  """What inner training needs of an optimizer (a learned one, or optax behind hyperparameters)."""

  def init(self, params: PyTree, *, num_steps: jax.Array | None = None) -> PyTree:
    ...

  def update(self, arg: PyTree, grads: PyTree, opt_state: PyTree, params: PyTree, *,
             loss: jax.Array | None = None) -> tuple[PyTree, PyTree]:
    ...


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Per-episode augmentations of inner training (all off by default).

  Attributes:
    param_scale: ``(low, high)``: each tensor of the parameters is reparameterized by its own
      factor ``c`` drawn log-uniformly in ``[low, high]`` at the episode's start (Celo's
      augmentation): the optimizer trains ``q = c p``, the loss is evaluated at ``p = q / c``,
      so it sees parameters ``c`` times and gradients ``1/c`` times their natural scale, and
      cannot rely on one scale. ``None``: off.
    label_noise: the probability that a training example's label is replaced by a uniformly
      random class (tasks whose batches have a ``"label"``; others are left as they are;
      evaluation batches keep their labels).
  """
  param_scale: tuple[float, float] | None = None
  label_noise: float = 0.0

  def check(self) -> None:
    """One ConfigError naming the field for a bad setting."""
    if self.param_scale is not None:
      low, high = (tuple(self.param_scale) + (None, None))[:2]
      if len(tuple(self.param_scale)) != 2 or not all(
          isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf
          for v in (low, high)) or low > high:
        raise ConfigError("param_scale", "must be (low, high) with 0 < low <= high; got "
                          f"{self.param_scale!r}")
    if isinstance(self.label_noise, bool) or not (
        isinstance(self.label_noise, (int, float)) and 0 <= self.label_noise <= 1):
      raise ConfigError("label_noise", f"must be a probability in [0, 1]; got {self.label_noise!r}")

  def relabel(self, batch: dict[str, jax.Array], key: jax.Array,
              num_classes: int) -> dict[str, jax.Array]:
    """``batch`` with each ``"label"`` replaced, with probability ``label_noise``, by a class
    drawn uniformly from ``num_classes`` (so about ``label_noise (1 - 1/num_classes)`` of them
    change)."""
    flip_key, label_key = jax.random.split(key)
    labels = batch["label"]
    flip = jax.random.bernoulli(flip_key, self.label_noise, labels.shape)
    random = jax.random.randint(label_key, labels.shape, 0, num_classes, labels.dtype)
    return {**batch, "label": jnp.where(flip, random, labels)}


class InnerState(NamedTuple):
  """One particle's inner training run.

  Attributes:
    params: the parameters the optimizer trains (``c p`` under the reparameterization).
    opt_state: the optimizer's state.
    task_state: the task's per-episode state (data order, curriculum).
    step: ``int32 []``, inner steps done in the episode.
    length: ``int32 []``, the episode's length.
    task_index: ``int32 []``, which task of the family the episode trains.
    previous: ``float32 []``, the last loss on the fixed batch (telescoping; else 0).
    fixed_key: ``uint32 [2]``, the key of the episode's fixed batch (telescoping).
    scales: the reparameterization factors, one ``float32 []`` per tensor (``None``: off).
  """
  params: PyTree
  opt_state: PyTree
  task_state: PyTree
  step: jax.Array
  length: jax.Array
  task_index: jax.Array
  previous: jax.Array
  fixed_key: jax.Array
  scales: PyTree


def check_options(family: Sequence[InnerTask], *, horizon: int, meta_loss: str, truncation: str,
                  min_horizon: int | None, fixed_batch_size: int,
                  augment: Augmentation) -> int | None:
  """One ConfigError naming the field for a bad option or task family; returns ``min_horizon``
  with its default (``horizon // 10``) filled in for ``log_uniform``."""
  if not family:
    raise ConfigError("task", "a task family needs at least one task")
  for t in family:
    if not isinstance(t, InnerTask):
      raise ConfigError("task", f"must be an InnerTask (tasks.build(...)); got "
                        f"{type(t).__name__}")
  if meta_loss not in META_LOSSES:
    raise ConfigError("meta_loss", f"unknown meta_loss {meta_loss!r}; valid: {', '.join(META_LOSSES)}")
  if truncation not in TRUNCATIONS:
    raise ConfigError("truncation", f"unknown truncation {truncation!r}; valid: {', '.join(TRUNCATIONS)}")
  check_positive_int("horizon", horizon, "inner steps per episode")
  check_positive_int("fixed_batch_size", fixed_batch_size)
  augment.check()
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
  if len({t.num_classes for t in family}) > 1:
    raise ConfigError("task", "a task family needs tasks with the same number of classes")
  return min_horizon


def _switch(index, branches, *operands):
  """``branches[index](*operands)``: ``lax.switch``, or the one branch of a single-task family."""
  if len(branches) == 1:
    return branches[0](*operands)
  return jax.lax.switch(index, branches, *operands)


def _episode_length(key, truncation, horizon, min_horizon) -> jax.Array:
  if truncation == "constant":
    return jnp.asarray(horizon, jnp.int32)
  u = jax.random.uniform(key)
  length = jnp.exp(math.log(min_horizon) + u * (math.log(horizon) - math.log(min_horizon)))
  return jnp.clip(jnp.round(length), min_horizon, horizon).astype(jnp.int32)


def _draw_scales(key, params, param_scale) -> PyTree:
  """One log-uniform factor in ``[low, high]`` per tensor of ``params``."""
  low, high = (math.log(v) for v in param_scale)
  leaves, treedef = jax.tree.flatten(params)
  u = jax.random.uniform(key, (len(leaves),))
  return jax.tree.unflatten(treedef, list(jnp.exp(low + u * (high - low))))


def _natural(params, scales):
  """The parameters the model reads: ``q / c`` per tensor (``q`` itself without scales)."""
  if scales is None:
    return params
  return jax.tree.map(lambda q, c: q / c, params, scales)


def inner_training(task: InnerTask | Sequence[InnerTask], optimizer: InnerOptimizer, *,
                   horizon: int, meta_loss: str = "train", truncation: str = "constant",
                   min_horizon: int | None = None, fixed_batch_size: int = 1000,
                   augment: Augmentation | None = None):
  """``(init, step, min_horizon)`` of inner training (see the module docstring).

  Args:
    task: an inner task, or a family (sequence) of tasks whose parameters share one structure.
    optimizer: ``init(params, num_steps=...)`` and ``update(arg, grads, opt_state, params, loss=...)``.
    horizon: ``T``, inner steps per episode (the longest, for ``log_uniform``).
    meta_loss: one of :data:`META_LOSSES`.
    truncation: one of :data:`TRUNCATIONS`.
    min_horizon: the shortest episode for ``log_uniform`` (default ``horizon // 10``).
    fixed_batch_size: examples in the fixed batch of the telescoping meta-loss.
    augment: per-episode augmentations (default: none).

  Returns:
    ``init(key, data) -> InnerState``, ``step(arg, state, key, data) -> (state, L_t)`` (``data``:
    a tuple, one entry per task of the family) and ``min_horizon`` (``None`` unless
    ``log_uniform``).
  """
  family = tuple(task) if isinstance(task, (list, tuple)) else (task,)
  augment = augment or Augmentation()
  min_horizon = check_options(family, horizon=horizon, meta_loss=meta_loss, truncation=truncation,
                              min_horizon=min_horizon, fixed_batch_size=fixed_batch_size,
                              augment=augment)
  core = _Core(family, optimizer, horizon=horizon, meta_loss=meta_loss, truncation=truncation,
               min_horizon=min_horizon, fixed_batch_size=fixed_batch_size, augment=augment)
  return core.init, core.step, min_horizon


@dataclasses.dataclass(frozen=True)
class _Core:
  """The two functions of :func:`inner_training` over checked settings."""
  family: tuple[InnerTask, ...]
  optimizer: InnerOptimizer
  horizon: int
  meta_loss: str
  truncation: str
  min_horizon: int | None
  fixed_batch_size: int
  augment: Augmentation

  def each(self, fn):
    """Branches ``fn(task_number, task)(*operands)`` for ``_switch``, one per task."""
    return [lambda *a, i=i, t=t: fn(i, t)(*a) for i, t in enumerate(self.family)]

  def init(self, key, data) -> InnerState:
    k_index, k_len, k_params, k_state, k_fixed = jax.random.split(as_typed_key(key), 5)
    index = jax.random.randint(k_index, (), 0, len(self.family))
    params = _switch(index, self.each(lambda i, t: t.init_params), k_params)
    task_state = _switch(index, self.each(lambda i, t: t.init_state), k_state)
    scales = None
    if self.augment.param_scale is not None:
      scales = _draw_scales(jax.random.fold_in(k_params, 1), params, self.augment.param_scale)
      params = jax.tree.map(lambda p, c: p * c, params, scales)
    length = _episode_length(k_len, self.truncation, self.horizon, self.min_horizon)
    return InnerState(params=params, opt_state=self.optimizer.init(params, num_steps=length),
                      task_state=task_state, step=jnp.zeros((), jnp.int32), length=length,
                      task_index=index, previous=jnp.zeros((), jnp.float32),
                      fixed_key=jax.random.key_data(k_fixed), scales=scales)

  def step(self, arg, state: InnerState, key, data) -> tuple[InnerState, jax.Array]:
    k_batch, k_eval = jax.random.split(key)
    loss, grads, task_state = self._gradient(state, k_batch, data)
    updates, opt_state = self.optimizer.update(arg, grads, state.opt_state, state.params,
                                               loss=loss)
    params = optax.apply_updates(state.params, updates)
    new = state._replace(params=params, opt_state=opt_state, task_state=task_state,
                         step=state.step + 1)
    if self.meta_loss == "train":
      return new, _switch(state.task_index, self.each(lambda i, t: t.normalize), loss)
    if self.meta_loss == "valid":
      return new, self._measure(new, k_eval, data, "outer_valid")
    current = self._measure(new, jax.random.wrap_key_data(state.fixed_key), data, "train",
                            self.fixed_batch_size)
    return new._replace(previous=current), current - state.previous

  def _gradient(self, state: InnerState, key, data):
    """The training loss of the episode task's next batch, its gradient and the task state."""
    def run(i, t):
      def branch(params, task_state, k):
        batch, task_state = t.train_batch(data[i], task_state, k)
        if self.augment.label_noise and "label" in batch:
          batch = self.augment.relabel(batch, jax.random.fold_in(k, 1), t.num_classes)
        loss, grads = jax.value_and_grad(
            lambda p: t.loss(_natural(p, state.scales), batch))(params)
        return loss, grads, t.update_state(task_state, loss)
      return branch
    return _switch(state.task_index, self.each(run), state.params, state.task_state, key)

  def _measure(self, state: InnerState, key, data, split, batch_size=None):
    """Normalized loss of ``state``'s parameters on a random batch of ``split`` of the
    episode's task."""
    def run(i, t):
      def branch(params, k):
        batch = t.eval_batch(data[i], split, k, batch_size=batch_size)
        return t.normalize(t.loss(_natural(params, state.scales), batch))
      return branch
    return _switch(state.task_index, self.each(run), state.params, key)
