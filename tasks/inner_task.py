"""The inner-task interface: what a learned optimizer trains.

An :class:`InnerTask` is pure functions over pytrees, with its data passed in explicitly::

    params = task.init_params(key)                     # a Flax model's parameters
    state = task.init_state(key)                       # per-episode: data order, curriculum
    batch, state = task.train_batch(data, state, key)  # the next training batch
    loss = task.loss(params, batch)                    # mean loss on the batch
    state = task.update_state(state, loss)             # e.g. the copy task's curriculum
    batch = task.eval_batch(data, "outer_valid", key)  # a random batch of another split

``task.data`` holds the device arrays (``None`` for tasks that generate their data);
``task.normalize(loss)`` clips a loss to ``[0, 1.5 ln(num_classes)]`` and maps NaN to that bound
(the meta-loss of learned-optimizer training never leaves that range).

The tasks themselves: image classification and autoencoding (:mod:`tasks.image_tasks`), the LSTM
copy task (:mod:`tasks.lstm_copy`); their registered names are in :mod:`tasks.catalog`.
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

PyTree = Any


class InnerTask(abc.ABC):
  """A training problem for a learned optimizer (see the module docstring)."""

  task_kind: ClassVar[str] = "inner"  # what the task registry builds (tasks.registry)

  name: str
  num_classes: int
  batch_size: int
  data: Any = None

  @abc.abstractmethod
  def init_params(self, key: jax.Array) -> PyTree:
    """Fresh model parameters (``key``: typed, or a raw ``uint32[2]`` key with the same bits)."""

  @abc.abstractmethod
  def init_state(self, key: jax.Array) -> PyTree:
    """A fresh episode's task state (data order, curriculum)."""

  @abc.abstractmethod
  def train_batch(self, data: Any, state: PyTree, key: jax.Array) -> tuple[PyTree, PyTree]:
    """The next training batch and the advanced task state."""

  @abc.abstractmethod
  def eval_batch(self, data: Any, split: str, key: jax.Array, *,
                 batch_size: int | None = None) -> PyTree:
    """A random batch of ``split`` (``inner_valid``, ``outer_valid``, ``test`` or ``train``) of
    ``batch_size`` examples (default: the task's)."""

  @abc.abstractmethod
  def loss(self, params: PyTree, batch: PyTree) -> jax.Array:
    """The mean loss of the model on the batch."""

  def update_state(self, state: PyTree, loss: jax.Array) -> PyTree:
    """Task state after a training step with loss ``loss`` (default: unchanged)."""
    del loss
    return state

  def normalize(self, loss: jax.Array) -> jax.Array:
    """``loss`` clipped to ``[0, 1.5 ln(num_classes)]``, NaN mapped to the upper bound."""
    bound = 1.5 * math.log(self.num_classes)
    return jnp.where(jnp.isnan(loss), bound, jnp.clip(loss, 0.0, bound))

  def __repr__(self):
    return f"{type(self).__name__}({self.name!r})"
