"""The events of a window, per pair, worked out in closed form before any step runs: where each
pair starts an episode, and where it draws noise (at an episode start, and wherever the
estimator's :class:`~meta_train.engine.window.noise.NoiseRule` draws)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from meta_train.engine import xla_cpu
from meta_train.engine.window.noise import NoiseRule


class WindowPlan(NamedTuple):
  """What happens to each of ``P`` pairs in a window of ``W`` steps (``int32`` arrays).

  Attributes:
    end: ``[P]``, the steps the pair takes: ``W``, or fewer in a burn-in.
    start: ``[P]``, the window step before which the pair starts a new episode (fresh state, fresh
      noise, restarted credit); ``W`` when it starts none. A window is no longer than the shortest
      episode, so a pair starts at most one.
    draws: ``[P, M]``, the window steps at which the pair draws fresh noise, ascending, padded
      with ``W`` (``M = max_draws(W, noise_rule)``); ``None`` for a window without noise.
    num_steps: ``W`` (static).
  """
  end: jax.Array
  start: jax.Array
  draws: jax.Array | None
  num_steps: int

  @property
  def began(self) -> jax.Array:
    """``[P] bool``: the pair starts an episode in the window."""
    return self.start < self.num_steps

  def events_at_start(self) -> jax.Array:
    """A scalar bool: every episode start and noise draw falls on the window's first step, so
    that no pair changes episode or noise inside the window."""
    W = self.num_steps
    ok = (self.start == 0) | (self.start == W)
    if self.draws is not None:
      ok = ok & jnp.all((self.draws == 0) | (self.draws == W), axis=1)
    return xla_cpu.all_true(ok)


def plan_window(t: jax.Array, length: jax.Array | None, *, num_steps: int,
                noise_rule: NoiseRule | None, end: jax.Array | None = None) -> WindowPlan:
  """The events of a window of ``W = num_steps`` steps.

  Args:
    t: ``[P] int32``, each pair's steps taken in its current episode (0: its next step starts an
      episode).
    length: ``[P] int32``, the length of each pair's current episode; ``None`` for a system that
      never resets (an episode then starts only at ``t == 0``).
    num_steps: ``W``.
    noise_rule: when noise is drawn besides at episode starts; ``None`` for a window without
      noise.
    end: ``[P] int32``, the steps each pair takes (a burn-in); ``None``: ``W`` for all.

  A pair starts an episode at the window step ``length - t`` (at step 0 if ``t == 0``), if that
  is before its ``end``.
  """
  W = num_steps
  end = (jnp.full_like(t, W) if end is None else jnp.clip(end, 0, W).astype(jnp.int32))
  if length is None:
    first_step = jnp.where(t == 0, 0, W)
  else:
    first_step = jnp.where(t == 0, 0, length - t)
  start = jnp.where(first_step < end, first_step, W)
  draws = None if noise_rule is None else draw_steps(t, start, end, W, noise_rule)
  return WindowPlan(end=end, start=start, draws=draws, num_steps=W)


def max_draws(num_steps: int, noise_rule: NoiseRule) -> int:
  """A static bound on the noise draws of one pair in one window of ``num_steps <= T`` steps:
  one episode start at most, and the rule's own draws."""
  return min(1 + noise_rule.max_draws(num_steps), num_steps)


def draw_steps(t: jax.Array, start: jax.Array, end: jax.Array, num_steps: int,
               noise_rule: NoiseRule) -> jax.Array:
  """The window steps at which each pair draws fresh noise: ``[P, M]``, ascending, padded with
  ``num_steps``; ``M = max_draws(num_steps, noise_rule)``.

  Args:
    t: ``[P]``, the pairs' positions in their episodes at the window's start.
    start: ``[P]``, the step at which each pair starts an episode (``num_steps``: none).
    end: ``[P]``, the steps each pair takes.
    num_steps: ``W``.
    noise_rule: the draws besides episode starts (:meth:`NoiseRule.next_draw`).

  A pair draws at its episode start and wherever the rule draws; never at or after ``end``. One
  elementwise pass per column: the next draw is the earliest candidate after the previous one.
  """
  W = num_steps
  d = jnp.full_like(t, -1)  # the previous draw
  columns = []
  for _ in range(max_draws(W, noise_rule)):
    nxt = jnp.where(start > d, start, W)
    nxt = jnp.minimum(nxt, noise_rule.next_draw(d, t=t, start=start, end=end, num_steps=W))
    d = jnp.where(nxt < end, nxt, W)
    columns.append(d)
  return jnp.stack(columns, axis=1)
