"""The copy task learned directly (tasks/rnn_copy.py): the sequences, the stream, the loss and
the curriculum's data.

The quick tier (``-m "not slow"``) checks the sequences, the stream, the loss and the curriculum
(a few NRES updates); the ``slow`` test adds learning to copy one bit with truncated backprop
(300 updates)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tasks
from lopt_meta.errors import ConfigError
from meta_train.estimators import NRES, TBPTT
from meta_train.engine.trainer import Trainer
from tasks import copy_sequences, rnn_copy


def small(**overrides):
  return tasks.get("rnn_copy", **{"hidden_size": 8, "batch_size": 4, "horizon": 30,
                                  "max_length": 6, **overrides})


@pytest.mark.parametrize("longest", [1, 3, 6])
@pytest.mark.parametrize("per_sequence", [False, True])
def test_sequence_layout(longest, per_sequence):
  """l bits, the delimiter, l blanks during which the targets are the bits, then blanks; l is
  drawn from {max(1, L - 5) .. L}, once for the batch (this system) or per sequence (the inner
  task lstm_copy)."""
  for k in range(6):
    batch = copy_sequences.draw(jax.random.key(k), jnp.int32(longest), 4, 6,
                                per_sequence=per_sequence)
    tokens, targets, writes, lengths = map(np.asarray, batch)
    assert lengths.shape == ((4,) if per_sequence else ())
    for i, l in enumerate(np.broadcast_to(lengths, (4,))):
      l = int(l)
      assert max(1, longest - 5) <= l <= longest
      bits = tokens[i, :l]
      assert set(np.unique(bits)) <= {0, 1}
      assert tokens[i, l] == copy_sequences.DELIMITER
      assert np.all(tokens[i, l + 1:] == copy_sequences.BLANK)
      np.testing.assert_array_equal(targets[i, l + 1:2 * l + 1], bits)
      assert np.all(targets[i, :l + 1] == 0) and np.all(targets[i, 2 * l + 1:] == 0)
      np.testing.assert_array_equal(np.flatnonzero(writes[i]), np.arange(l + 1, 2 * l + 1))


def test_stream_loss_and_restart():
  """The loss is 0 at read positions and the batch's cross-entropy at write positions; after
  2l + 1 steps a new sequence starts from a zero carry."""
  system = small(start_length=3)
  bound = system.bound()
  theta = system.theta0
  state = bound.init(jax.random.key(0))
  l = int(state["length"])
  model = rnn_copy.CopyCell(8)
  carry = state["carry"]
  for t in range(2 * l + 1):
    key = jax.random.key(100 + t)
    carry, logits = model.apply({"params": theta}, carry, state["tokens"][:, t])
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, state["targets"][:, t])
    new, loss = bound.step(theta, state, key)
    if t <= l:
      assert float(loss) == 0.0
    else:
      np.testing.assert_allclose(float(loss), float(jnp.mean(expected)), rtol=1e-6)
    if t < 2 * l:
      assert int(new["pos"]) == t + 1
      state = new
  # The last write step started the next sequence, drawn from that step's key.
  fresh = bound.init(key)
  for name in ("tokens", "targets", "length", "pos"):
    np.testing.assert_array_equal(np.asarray(new[name]), np.asarray(fresh[name]))
  assert all(float(jnp.max(jnp.abs(c))) == 0.0 for c in new["carry"])


def test_curriculum_is_the_data():
  """``Trainer.run(..., data=)`` draws the next sequences at the given L; the system's own data
  (start_length) otherwise."""
  system = small(start_length=1, horizon=12)
  trainer = Trainer(NRES(system, num_particles=4, sigma=0.01, unroll_length=3), optax.adam(1e-3))
  state = trainer.init(jax.random.key(0), system.theta0)
  state, _ = trainer.run(state, 8)
  assert np.all(np.asarray(state.workers.states["length"]) == 1)
  state, _ = trainer.run(state, 8, data={"length": jnp.int32(6)})  # 24 steps: new sequences
  lengths = np.asarray(state.workers.states["length"])
  assert np.all(lengths >= 1) and np.any(lengths >= 2), lengths


def test_copy_loss_is_nats_per_bit():
  """Untrained, the copier is near chance: ln 2 nats per bit (within 0.1)."""
  system = small()
  loss = float(rnn_copy.copy_loss(system, system.theta0, jax.random.key(0), 4, num_batches=4))
  assert abs(loss - math.log(2.0)) < 0.1, loss


@pytest.mark.slow
def test_tbptt_learns_length_one():
  """Truncated backprop with W spanning a whole sequence learns to copy one bit (L=1): the
  copy loss falls below 0.15 nats within 300 Adam steps."""
  system = small(start_length=1, hidden_size=16, batch_size=16, horizon=30)
  trainer = Trainer(TBPTT(system, num_particles=2, unroll_length=6), optax.adam(3e-2))
  state = trainer.init(jax.random.key(0), system.theta0)
  state, _ = trainer.run(state, 300)
  loss = float(rnn_copy.copy_loss(system, state.theta, jax.random.key(1), 1, num_batches=4))
  assert loss < 0.15, loss


@pytest.mark.parametrize("field, value, message", [
    ("start_length", 0, "start_length: must be an int in [1, max_length=6]; got 0"),
    ("start_length", 7, "start_length: must be an int in [1, max_length=6]; got 7"),
    ("hidden_size", 0, "hidden_size"),
    ("horizon", -1, "horizon"),
])
def test_bad_options(field, value, message):
  with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
    small(**{field: value})
