"""What the window engine asks of a noise rule: when a pair draws, and what a step is credited to.

Every pair draws fresh noise at the start of each of its episodes (the engine's convention: an
episode starts with a fresh state, fresh noise and a restarted credit). A :class:`NoiseRule` adds
the draws it makes inside an episode and says what each step's ``L+ - L-`` is credited to. The
rules themselves live beside their estimators (:mod:`meta_train.engine.estimators`); the engine
knows only this interface:

* :meth:`NoiseRule.max_draws` sizes the window's plan (static);
* :meth:`NoiseRule.next_draw` places the draws in the plan (:func:`.plan.draw_steps`);
* :attr:`NoiseRule.accumulates` and :meth:`NoiseRule.credit` give each noise segment its credit
  (:mod:`.segments`): the noise in use, or a credit the pair keeps and updates at each draw;
* :attr:`NoiseRule.draws_every_window` (static, default False) lets a window whose draws all fall
  on its first step take the fresh noise without computing which pairs draw.
"""

from __future__ import annotations

import abc
from typing import Any

import jax

PyTree = Any


class NoiseRule(abc.ABC):
  """When a pair draws fresh noise inside an episode, and what its loss differences are credited
  to. Static: a rule is read while a window is traced, never passed into a compiled function."""

  @abc.abstractmethod
  def max_draws(self, num_steps: int) -> int:
    """A static bound on the draws one pair makes in one window of ``num_steps <= T`` steps, not
    counting the draw at an episode start (the engine adds that one)."""

  @abc.abstractmethod
  def next_draw(self, prev: jax.Array, *, t: jax.Array, start: jax.Array, end: jax.Array,
                num_steps: int) -> jax.Array:
    """``[P] int32``: the first window step after ``prev`` at which each pair draws under this
    rule, not counting episode starts; ``num_steps`` (or any step ``>= end``) where it draws none.

    Args:
      prev: ``[P] int32``, the pair's previous draw in the window; ``-1`` before the first.
      t: ``[P] int32``, the pair's position in its episode at the window's start (window step
        ``j < start`` is position ``t + j``).
      start: ``[P] int32``, the window step at which the pair starts a new episode (position
        ``j - start`` from there); ``num_steps`` if it starts none.
      end: ``[P] int32``, the steps the pair takes in the window.
      num_steps: ``W`` (static).
    """

  @property
  @abc.abstractmethod
  def accumulates(self) -> bool:
    """Whether the pair keeps a credit of its own (``WorkerState.xi``), updated by :meth:`credit`
    at each draw. A rule that does not credits each step to the noise the pair runs at that step
    (the noise in use), and :meth:`credit` is not called."""

  draws_every_window: bool = False
  """Whether every pair draws at the first step of every window (whatever else it draws):
  :func:`.segments.at_first_step` then gives every pair the fresh noise, with no mask to compute
  and select by."""

  def credit(self, credit: PyTree, noise: PyTree, new_episode: jax.Array) -> PyTree:
    """The credit after a pair draws ``noise`` (theta-like trees, leaves ``[P, ...]``;
    ``credit``: the credit before the draw; ``new_episode: [P] bool``, the draw starts an
    episode). Here the noise itself, the credit of a rule that does not accumulate; a rule that
    accumulates overrides it."""
    del credit, new_episode
    return noise
