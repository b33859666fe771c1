"""The two forms of a window on one device's pairs: events on the first step, or anywhere.

A window starts from its :class:`Setup` (the pairs' plan, their fresh episode states and keys)
and its noise :class:`~meta_train.engine.window.segments.Segments`. Both forms return the same
structure (they are the two branches of one ``lax.cond``): the particles' states after the
window, the noise and credit then in use (a :class:`Carry`), and the window's sums with the
credited gradient sums (a :class:`~meta_train.engine.window.sums.WindowOut`).

* :func:`events_at_start`: every episode start and noise draw falls on step 0 (the rule once
  pairs are step-unlocked on the window grid). They are applied before the scan, whose steps run
  a loop-invariant theta per particle with no selects: a plain rollout.
* :func:`events_anywhere`: per-step selects (fused into the step) start each pair's episode at
  ``plan.start`` and switch its segment at its draws.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from meta_train.engine import maths
from meta_train.engine import tree as tree_lib
from meta_train.engine import xla_cpu
from meta_train.engine.keys import RESET, STEP, pair_step_key
from meta_train.engine.window.particles import Particles
from meta_train.engine.window.noise import NoiseRule
from meta_train.engine.window.plan import WindowPlan, plan_window
from meta_train.engine.window.rollout import Restart, rollout
from meta_train.engine.window.segments import Segments
from meta_train.engine.window.sums import WindowOut, window_sums

PyTree = Any


class Setup(NamedTuple):
  """What both forms of a window start from.

  Attributes:
    particles: the ``P`` pairs x ``S`` branches.
    plan: each pair's events in the window.
    fresh: fresh episode states, one per pair (leaves ``[P, ...]``), taken where
      ``plan.start < W``.
    fresh_length: ``[P] int32``, their episodes' lengths.
    pair_keys: ``[P]`` keys of the pairs' window.
  """
  particles: Particles
  plan: WindowPlan
  fresh: PyTree
  fresh_length: jax.Array
  pair_keys: jax.Array


class Carry(NamedTuple):
  """What a window hands on to the workers besides its sums.

  Attributes:
    states: the particles' states, flat (leaves ``[P * S, ...]``).
    eps: the noise in use after the window (theta-like ``[P, ...]``, or ``None``).
    xi: the credit after the window (a noise rule that accumulates), or ``None``.
  """
  states: PyTree
  eps: PyTree
  xi: PyTree


def setup(system, ws, pair_keys, *, num_steps: int, signs: tuple[float, ...],
          noise_rule: NoiseRule | None, end: jax.Array | None = None) -> Setup:
  """The window's plan and its fresh episode states (built once; the pairs that start an
  episode take theirs)."""
  plan = plan_window(ws.t, None if system.horizon is None else ws.length, num_steps=num_steps,
                     noise_rule=noise_rule, end=end)
  fresh = jax.vmap(system.init)(pair_step_key(pair_keys, plan.start, RESET))
  return Setup(Particles(ws.t.shape[0], signs), plan, fresh, jax.vmap(system.length_of)(fresh),
               pair_keys)


def events_at_start(system, s: Setup, segments: Segments, states, *,
                    estimate: bool) -> tuple[Carry, WindowOut]:
  """Every event falls on step 0: episodes start before the scan, whose steps run each
  particle's theta as a loop invariant, with no selects (XLA hoists what depends on theta)."""
  p = s.particles
  states = tree_lib.where_leading(p.per_particle(s.plan.start == 0), p.per_particle(s.fresh),
                                  states)
  theta = segments.theta[0]
  states, losses = rollout(step_fn(system, s, segments.theta_axis), states, s.plan.num_steps,
                           lambda j: theta)
  sums = window_sums(losses, num_segments=1 if estimate else 0)
  return _credited(states, sums, segments, estimate)


def events_anywhere(system, s: Setup, segments: Segments, states, *, estimate: bool,
                    stop: bool = False) -> tuple[Carry, WindowOut]:
  """Events on any step: per-step selects (fused into the step) start each pair's episode at
  ``plan.start`` and switch its segment at its draws. With ``stop``, pair ``i`` takes only its
  first ``plan.end[i]`` steps."""
  p, plan, W = s.particles, s.plan, s.plan.num_steps
  restart = Restart(*xla_cpu.materialize((p.per_particle(s.fresh), p.per_particle(plan.start))))
  stop_at = xla_cpu.materialize(p.per_particle(plan.end)) if stop else None
  states, losses = rollout(step_fn(system, s, segments.theta_axis), states, W,
                           segments.theta_at, restart=restart, stop=stop_at)
  j = jnp.arange(W, dtype=jnp.int32)[:, None]  # [W, 1]
  num_segments = segments.num_segments if estimate else 0
  sums = window_sums(losses, num_segments=num_segments, taken=(j < plan.end) if stop else None,
                     segment=segments.index(j) if num_segments > 1 else None)
  return _credited(states, sums, segments, estimate)


def step_fn(system, s: Setup, theta_axis):
  """``step(theta, states, j)``: every particle (flat) takes window step ``j`` with its pair's
  step key; losses ``[P, S]`` float32."""
  p = s.particles

  def step(theta, states, j):
    keys = p.per_particle(pair_step_key(s.pair_keys, j, STEP))
    new_states, losses = jax.vmap(system.step, in_axes=(theta_axis, 0, 0))(theta, states, keys)
    return new_states, losses.astype(jnp.float32).reshape(p.num_pairs, p.num_branches)
  return step


def _credited(states, sums: WindowOut, segments: Segments,
              estimate: bool) -> tuple[Carry, WindowOut]:
  """The segments' ``dl`` credited (``gsum = sum_e dl_e * credit_e``): the same structure from
  both forms, whatever their number of segments."""
  gsum = maths.credited_sums(sums.dl, segments.credit) if estimate else None
  return Carry(states, segments.eps, segments.xi), sums._replace(dl=None, gsum=gsum)
