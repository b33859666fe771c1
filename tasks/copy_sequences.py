"""The copy task's data: read ``l`` random bits, a delimiter, then write the bits back.

A sequence has ``S = 2 M + 1`` positions for strings of at most ``M`` bits: the ``l`` bits, the
delimiter at position ``l``, then blanks, during which a model must emit bit ``j`` at position
``l + 1 + j`` (the *write* positions ``l < pos <= 2 l``); past ``2 l`` it is padding. Tokens are
0/1 (bits), :data:`DELIMITER` and :data:`BLANK`. The lengths are drawn uniformly from
``{max(1, L - SPREAD) .. L}`` for the curriculum's current longest string ``L``: one length for
the whole batch (the LSTM of :mod:`tasks.rnn_copy`, which reads a stream step by step) or one
per sequence (the inner task ``lstm_copy``, :class:`tasks.lstm_copy.CopyTask`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

DELIMITER, BLANK = 2, 3
SPREAD = 5  # lengths are drawn from {max(1, L - SPREAD) .. L}


class CopyBatch(NamedTuple):
  """A batch of copy sequences.

  Attributes:
    tokens: ``int32[B, S]``, what the model reads.
    targets: ``int32[B, S]``, bit ``j`` at write position ``l + 1 + j``, 0 elsewhere.
    writes: ``bool[B, S]``, the write positions.
    lengths: ``int32[]`` (one length for the batch) or ``int32[B]``.
  """
  tokens: jax.Array
  targets: jax.Array
  writes: jax.Array
  lengths: jax.Array


def writes(pos: jax.Array, length: jax.Array) -> jax.Array:
  """Whether position ``pos`` is a write position of a sequence of ``length`` bits."""
  return (pos > length) & (pos <= 2 * length)


def draw(key: jax.Array, longest: jax.Array, batch_size: int, max_length: int, *,
         per_sequence: bool) -> CopyBatch:
  """``batch_size`` sequences of strings of at most ``max_length`` bits, their lengths drawn
  below ``longest`` (see the module docstring): one length, or one per sequence."""
  k_len, k_bits = jax.random.split(key)
  shape = (batch_size,) if per_sequence else ()
  lengths = jax.random.randint(k_len, shape, jnp.maximum(1, longest - SPREAD), longest + 1)
  bits = jax.random.bernoulli(k_bits, 0.5, (batch_size, max_length)).astype(jnp.int32)
  pos = jnp.arange(2 * max_length + 1)[None, :]
  length = jnp.reshape(lengths, (-1, 1))  # [1, 1] or [B, 1]
  index = jnp.broadcast_to(jnp.clip(pos - length - 1, 0, max_length - 1), (batch_size, pos.size))
  read_bit = jnp.take(bits, jnp.clip(pos[0], 0, max_length - 1), axis=1)
  write_bit = jnp.take_along_axis(bits, index, axis=1)
  tokens = jnp.where(pos < length, read_bit, jnp.where(pos == length, DELIMITER, BLANK))
  mask = jnp.broadcast_to(writes(pos, length), tokens.shape)
  return CopyBatch(tokens=tokens, targets=jnp.where(mask, write_bit, 0), writes=mask,
                   lengths=lengths)
