"""The events of a window, per pair, worked out in closed form before any step runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from meta_train.engine import xla_cpu


def noise_in_use(credit, noise, new_episode):
  """The credit rule of NRES and truncated ES: each step's ``L+ - L-`` is credited to the noise
  the pair runs at that step (``credit(credit_before, noise, new_episode) -> noise``). The workers
  keep no credit of their own under it (``WorkerState.xi`` is ``None``)."""
  del credit, new_episode
  return noise


class NoiseSchedule(NamedTuple):
  """When a pair draws fresh noise, and what its loss differences are credited to (static).

  A pair always draws at the start of each episode. Besides:

  Attributes:
    every_window: also at the first step of each window (PES, truncated ES).
    block: also whenever the step's position in its episode is a multiple of ``block`` (GPES_K
      with ``block=K``).
    credit: how a draw changes the credit, ``credit(credit_before, noise, new_episode) ->
      credit`` over theta-like ``[P, ...]`` trees (``new_episode: [P] bool``: the draw starts an
      episode): :func:`noise_in_use` (NRES, truncated ES) or
      :func:`meta_train.engine.estimators.pes.accumulated_credit` (PES, GPES_K).
  """
  every_window: bool = False
  block: int | None = None
  credit: Callable[[Any, Any, jax.Array], Any] = noise_in_use

  @property
  def accumulates(self) -> bool:
    """Whether the workers keep a credit of their own (``WorkerState.xi``): any rule but
    :func:`noise_in_use`."""
    return self.credit is not noise_in_use


class WindowPlan(NamedTuple):
  """What happens to each of ``P`` pairs in a window of ``W`` steps (``int32`` arrays).

  Attributes:
    end: ``[P]``, the steps the pair takes: ``W``, or fewer in a burn-in.
    start: ``[P]``, the window step before which the pair starts a new episode (fresh state, fresh
      noise, restarted credit); ``W`` when it starts none. A window is no longer than the shortest
      episode, so a pair starts at most one.
    draws: ``[P, M]``, the window steps at which the pair draws fresh noise, ascending, padded
      with ``W`` (``M = max_draws(W, schedule)``); ``None`` for a window without noise.
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
                schedule: NoiseSchedule | None, end: jax.Array | None = None) -> WindowPlan:
  """The events of a window of ``W = num_steps`` steps.

  Args:
    t: ``[P] int32``, each pair's steps taken in its current episode (0: its next step starts an
      episode).
    length: ``[P] int32``, the length of each pair's current episode; ``None`` for a system that
      never resets (an episode then starts only at ``t == 0``).
    num_steps: ``W``.
    schedule: when noise is drawn; ``None`` for a window without noise.
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
  draws = None if schedule is None else draw_steps(t, start, end, W, schedule)
  return WindowPlan(end=end, start=start, draws=draws, num_steps=W)


def max_draws(num_steps: int, schedule: NoiseSchedule) -> int:
  """A static bound on the noise draws of one pair in one window of ``num_steps <= T`` steps."""
  bound = 1  # one episode start at most
  if schedule.every_window:
    bound += 1
  if schedule.block is not None:
    bound += -(-num_steps // schedule.block) + 1
  return min(bound, num_steps)


def draw_steps(t: jax.Array, start: jax.Array, end: jax.Array, num_steps: int,
               schedule: NoiseSchedule) -> jax.Array:
  """The window steps at which each pair draws fresh noise: ``[P, M]``, ascending, padded with
  ``num_steps``; ``M = max_draws(num_steps, schedule)``.

  Args:
    t: ``[P]``, the pairs' positions in their episodes at the window's start.
    start: ``[P]``, the step at which each pair starts an episode (``num_steps``: none).
    end: ``[P]``, the steps each pair takes.

  A pair draws at its episode start, at step 0 if ``schedule.every_window``, and, with
  ``schedule.block = K``, at every step whose position in its episode is a multiple of ``K``
  (positions ``t + j`` before the episode start, ``j - start`` after it); never at or after
  ``end``. One elementwise pass per column: the next draw is the earliest candidate after the
  previous one.
  """
  W = num_steps
  old_end = jnp.minimum(start, end)  # steps [0, old_end) are in the pair's current episode
  d = jnp.full_like(t, -1)  # the previous draw
  columns = []
  for _ in range(max_draws(W, schedule)):
    nxt = jnp.where(start > d, start, W)
    if schedule.every_window:
      nxt = jnp.minimum(nxt, jnp.where(d < 0, 0, W))
    if schedule.block is not None:
      K = schedule.block
      j = d + 1  # the first step after d at a multiple of K: in the current episode (t + j) ...
      in_old = j + (K - (t + j) % K) % K
      nxt = jnp.minimum(nxt, jnp.where(in_old < old_end, in_old, W))
      j = jnp.maximum(d + 1, start)  # ... and in the new one (j - start)
      in_new = j + (K - (j - start) % K) % K
      nxt = jnp.minimum(nxt, jnp.where(start < W, in_new, W))
    d = jnp.where(nxt < end, nxt, W)
    columns.append(d)
  return jnp.stack(columns, axis=1)
