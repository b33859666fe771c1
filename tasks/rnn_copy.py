"""The copy task learned directly: theta is an LSTM's weights (ES-Single paper, section 4.3).

The LSTM reads a stream of copy sequences one token per step, a batch of ``B`` streams side by
side. A sequence of length ``l`` (Mujika et al. 2018) is ``l`` random bits, a delimiter, then
``l`` blanks during which the network must emit the bits: ``2 l + 1`` steps. When a sequence ends
the next one starts at the following step, with the LSTM's carry reset to zero, so sequences are
independent and an episode of ``T`` steps (``horizon``) holds several of them; the last may be cut
at the episode's end. A step's loss is the cross-entropy (nats per bit, mean over the batch) of
the bit emitted at a write position and exactly 0 at the other positions, so the objective
``(1/T) sum_t L_t`` is the stream's cross-entropy per step::

    system = tasks.get("rnn_copy")                         # LSTM of 100 units: 42,804 weights
    loss = rnn_copy.copy_loss(system, theta, key, length=jnp.int32(8))

**Curriculum.** ``system.data`` is ``{"length": int32[]}``, the curriculum's longest string
``L``: each new sequence draws ``l`` uniformly from ``{max(1, L - 5) .. L}`` (one ``l`` for the
whole batch), as the paper. A driver raises ``L`` between outer steps by passing other data
(``Trainer.run(state, n, data=...)``; ``benchmarks/copy_task.py`` raises it by one whenever a moving
average of :func:`copy_loss` drops below 0.15 nats per bit); otherwise ``L`` stays at
``start_length``. Everything random (the lengths and the bits) comes from the step keys, which
both particles of an antithetic pair share.

State: ``{"carry": (c, h) float32[B, H] each, "tokens": int32[B, S], "targets": int32[B, S],
"length": int32[], "pos": int32[]}`` with ``S = 2 max_length + 1``; tokens are 0/1 (bits), 2
(delimiter) and 3 (blank).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lopt_meta.errors import ConfigError, check_positive_int
from tasks import copy_sequences, initializers
from tasks.base import UnrolledSystem

class CopyCell(nn.Module):
  """One step of the copier: ``(carry, token) -> (carry, logits)``, an LSTM cell over one-hot
  tokens (recurrent kernel orthogonal, as Flax's default) and a Dense readout of 2 bit logits.
  ``token: int32[B]``, ``carry: (c, h)`` of ``float32[B, hidden_size]``, ``logits: [B, 2]``."""
  hidden_size: int

  @nn.compact
  def __call__(self, carry, token):
    cell = nn.OptimizedLSTMCell(self.hidden_size,
                                recurrent_kernel_init=initializers.orthogonal(), name="lstm")
    carry, h = cell(carry, jax.nn.one_hot(token, 4))
    return carry, nn.Dense(2, name="readout")(h)


def rnn_copy(*, hidden_size: int = 100, batch_size: int = 32, horizon: int = 200,
             start_length: int = 1, max_length: int = 40, seed: int = 0) -> UnrolledSystem:
  """The copy task as an unrolled system in the LSTM's weights (see the module docstring).

  Args:
    hidden_size: LSTM units (100: the paper's 42,804 weights).
    batch_size: ``B``, streams read side by side (the paper's minibatch of 32).
    horizon: ``T``, steps per episode.
    start_length: the curriculum's first ``L`` (``system.data["length"]``).
    max_length: the longest string the state can hold (the curriculum's ceiling).
    seed: the key of theta0's draw (Flax's default initializers).
  """
  for name, value in (("hidden_size", hidden_size), ("batch_size", batch_size),
                      ("horizon", horizon), ("max_length", max_length)):
    check_positive_int(name, value)
  if not (isinstance(start_length, int) and 1 <= start_length <= max_length):
    raise ConfigError("start_length", f"must be an int in [1, max_length={max_length}]; got "
                      f"{start_length!r}")
  model = CopyCell(hidden_size)
  zeros = jnp.zeros((batch_size, hidden_size))
  theta0 = model.init(jax.random.key(seed), (zeros, zeros),
                      jnp.zeros((batch_size,), jnp.int32))["params"]

  def fresh(key, data):
    batch = copy_sequences.draw(key, data["length"], batch_size, max_length, per_sequence=False)
    return {"carry": (zeros, zeros), "tokens": batch.tokens, "targets": batch.targets,
            "length": batch.lengths, "pos": jnp.zeros((), jnp.int32)}

  def step(theta, state, key, data):
    pos = state["pos"]
    carry, logits = model.apply({"params": theta}, state["carry"], state["tokens"][:, pos])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, state["targets"][:, pos])
    loss = jnp.where(copy_sequences.writes(pos, state["length"]), jnp.mean(ce), 0.0)
    ended = pos + 1 == 2 * state["length"] + 1
    after = fresh(key, data)
    new = {"carry": carry, "tokens": state["tokens"], "targets": state["targets"],
           "length": state["length"], "pos": pos + 1}
    new = jax.tree.map(lambda a, b: jnp.where(ended, a, b), after, new)
    return new, loss

  return UnrolledSystem(init=fresh, step=step, horizon=horizon, theta0=theta0, name="rnn_copy",
                        data={"length": jnp.asarray(start_length, jnp.int32)})


def copy_loss(system: UnrolledSystem, theta, key: jax.Array, length: jax.Array,
              num_batches: int = 1) -> jax.Array:
  """Cross-entropy (nats per bit) of ``theta`` on the write positions of ``num_batches`` fresh
  batches of sequences drawn at curriculum length ``length``, each read from a zero carry: the
  curriculum's test (the paper moves on when its moving average is below 0.15)."""
  data = {"length": jnp.asarray(length, jnp.int32)}
  bound = system.bind(data)

  def one(k):
    state = bound.init(k)
    span = 2 * state["length"] + 1
    s = state["tokens"].shape[1]
    # Run the longest sequence; steps past this one's end are masked out (no new sequence).
    def body(carry, pos):
      st, total = carry
      new, loss = bound.step(theta, st, k)
      keep = pos < span
      st = jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, st)
      return (st, total + jnp.where(keep, loss, 0.0)), None
    (_, total), _ = jax.lax.scan(body, (state, jnp.zeros(())), jnp.arange(s))
    return total / state["length"]
  return jnp.mean(jax.vmap(one)(jax.random.split(key, num_batches)))
