"""The window's steps: the one ``lax.scan`` over steps in the engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from meta_train.engine import tree as tree_lib

PyTree = Any
StepFn = Callable[[PyTree, PyTree, jax.Array], tuple[PyTree, jax.Array]]


class Restart(NamedTuple):
  """Episode starts inside a window: particle ``n`` takes ``states[n]`` before step ``at[n]``.

  Attributes:
    states: fresh episode states, leaves ``[N, ...]`` (materialized: see :mod:`meta_train.engine.xla_cpu`).
    at: ``[N] int32``, the step; the window's length for a particle that starts no episode.
  """
  states: PyTree
  at: jax.Array


def rollout(step: StepFn, states: PyTree, num_steps: int, theta_at: Callable[[jax.Array], PyTree],
            *, restart: Restart | None = None, stop: jax.Array | None = None
            ) -> tuple[PyTree, jax.Array]:
  """Runs ``N`` particles ``W = num_steps`` steps and returns their states and every step's losses.

  Args:
    step: ``step(theta, states, j) -> (states, losses)``: every particle takes window step ``j``
      (leaves ``[N, ...]``; ``losses`` of any shape, e.g. ``[P, S]``).
    states: the particles' states before step 0, leaves ``[N, ...]``.
    num_steps: ``W``.
    theta_at: the particles' theta at step ``j``; a function that ignores ``j`` makes theta loop
      invariant, and XLA hoists what depends on theta alone out of the loop.
    restart: episode starts inside the window (a per-step select, fused into the step); ``None``
      when every episode start was applied before the window.
    stop: ``[N] int32``: particle ``n`` takes only steps ``j < stop[n]`` and keeps its state
      after (a burn-in); ``None``: every particle takes every step.

  Returns:
    ``(states, losses)``, ``losses: [W, ...]`` stacked over the steps.
  """
  def body(carry, _):
    states, j = carry
    if restart is not None:
      states = tree_lib.where_leading(j == restart.at, restart.states, states)
    new_states, losses = step(theta_at(j), states, j)
    if stop is not None:
      new_states = tree_lib.where_leading(j >= stop, states, new_states)
    return (new_states, j + 1), losses
  (states, _), losses = jax.lax.scan(body, (states, jnp.int32(0)), None, length=num_steps)
  return states, losses
