"""The copy task with an LSTM and a length curriculum (an inner task)."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt_meta.errors import ConfigError
from lopt_meta.prng import as_typed_key
from tasks import copy_sequences
from tasks.inner_task import InnerTask
from tasks.models import CopyModel


class CopyState(NamedTuple):
  """The curriculum: the current longest string ``length`` and a moving average of the loss."""
  length: jax.Array  # shape=(), dtype=int32
  average_loss: jax.Array  # shape=(), dtype=float32


class CopyTask(InnerTask):
  """Copy a random binary string: read ``L`` bits, a delimiter, then output the bits.

  A sequence has ``2 max_length + 1`` positions: the bits, a delimiter, then blanks during which
  the model must emit the bits (padding past ``2 L + 1`` is masked). The loss is the mean
  cross-entropy over the output positions. Curriculum: each batch draws its lengths uniformly
  from ``{max(1, L - 5) .. L}``; when the moving average of the loss (decay 0.9) drops below
  ``threshold`` nats per bit, ``L`` grows by one (up to ``max_length``) and the average restarts.
  """

  def __init__(self, name: str = "lstm_copy", *, hidden_size: int = 64, batch_size: int = 32,
               start_length: int = 2, max_length: int = 20, threshold: float = 0.15):
    if not 1 <= start_length <= max_length:
      raise ConfigError("start_length", f"must be in [1, max_length={max_length}]; got {start_length}")
    self.name = name
    self.model = CopyModel(hidden_size=hidden_size)
    self.batch_size = int(batch_size)
    self.start_length, self.max_length = int(start_length), int(max_length)
    self.threshold = float(threshold)
    self.num_classes = 2
    self.data = None

  @property
  def sequence_length(self) -> int:
    return 2 * self.max_length + 1

  def init_params(self, key):
    return self.model.init(as_typed_key(key),
                           jnp.zeros((1, self.sequence_length), jnp.int32))["params"]

  def init_state(self, key):
    del key
    return CopyState(length=jnp.asarray(self.start_length, jnp.int32),
                     average_loss=jnp.asarray(math.log(2.0), jnp.float32))

  def _batch(self, key, longest, batch_size=None):
    size = self.batch_size if batch_size is None else batch_size
    batch = copy_sequences.draw(key, longest, size, self.max_length, per_sequence=True)
    return {"tokens": batch.tokens, "targets": batch.targets, "mask": batch.writes}

  def train_batch(self, data, state, key):
    del data
    return self._batch(key, state.length), state

  def eval_batch(self, data, split, key, *, batch_size=None):
    del data, split
    return self._batch(key, jnp.asarray(self.max_length, jnp.int32), batch_size)

  def loss(self, params, batch):
    logits = self.model.apply({"params": params}, batch["tokens"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    mask = batch["mask"].astype(jnp.float32)
    return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)

  def update_state(self, state, loss):
    avg = 0.9 * state.average_loss + 0.1 * jnp.where(jnp.isfinite(loss), loss, math.log(2.0))
    grow = (avg < self.threshold) & (state.length < self.max_length)
    return CopyState(length=state.length + grow.astype(jnp.int32),
                     average_loss=jnp.where(grow, jnp.float32(math.log(2.0)), avg))


def lstm_copy(*, hidden_size: int = 64, batch_size: int = 32, start_length: int = 2,
              max_length: int = 20, threshold: float = 0.15) -> CopyTask:
  """The copy task with a 1-layer LSTM and a length curriculum."""
  return CopyTask(hidden_size=hidden_size, batch_size=batch_size, start_length=start_length,
                  max_length=max_length, threshold=threshold)
