"""Particle workers: persistent states, antithetic pairs, episode resets, step-unlocking.

Every windowed estimator in :mod:`meta_train.engine.estimators` advances its particles with
:func:`run_window` (truncated backprop with :func:`tbptt_window`, the start-up burn-in with
:func:`burn_in`): ``P`` pairs x ``S`` branches (``theta + eps``, ``theta - eps``, and for truncated
ES the unperturbed centre), batched with ``jax.vmap`` and scanned over the window's steps. Nothing
runs in a Python loop over particles or steps.

Conventions (DESIGN §2 and §6):

* Positions. ``t[i]`` counts the steps pair ``i`` has taken in its current episode; ``t == 0``
  means the next step starts a new episode. Episodes last ``T`` steps, or, for systems whose
  episodes vary in length, what ``system.episode_length`` says of the episode's fresh state.
  Before the first step of an episode the pair's state is replaced by a fresh ``system.init``,
  its noise is redrawn and its credit restarts. So the loss of an episode's last step is still
  paired with the old noise, and a window that straddles an episode boundary switches noise
  exactly at the boundary.
* Randomness. Window key -> ``split(key, P)`` pair keys -> at window step ``j``
  :func:`meta_train.engine.keys.pair_step_key` gives the reset, noise and step keys. Every function here
  takes a typed key or a raw ``uint32[2]`` one and hands the system typed keys.
* Credit. Each step's ``L+ - L-`` is credited to the pair's credit: the noise in use (NRES,
  truncated ES) or the sum of the episode's noise blocks so far (PES, GPES_K), see
  :class:`meta_train.engine.window.NoiseSchedule`.
* Masking. A (pair, step) whose losses are not all finite contributes nothing and is counted.
* Step-unlocking. Pairs are burned in to random positions of their first episode
  (:func:`unlock_positions`).

A window, in four steps (:func:`run_window`):

1. :func:`meta_train.engine.window.plan_window`: each pair's episode start and noise draws, in closed
   form from its position;
2. :mod:`meta_train.engine.window.segments`: the noise drawn, and the window's segments of constant
   noise, each with its perturbed theta and credit;
3. :func:`meta_train.engine.window.rollout`: the scan over the steps, storing every step's losses;
4. :func:`meta_train.engine.window.window_sums`: per pair, valid steps, loss per branch and ``dl`` per
   segment (:class:`meta_train.engine.window.WindowSums`), from which
   :func:`meta_train.engine.maths.credited_sums` forms ``sum_t dl_t * credit_t``.

It runs in one of two forms (a ``lax.cond`` per window). When every event falls on the window's
first step (the rule once pairs are step-unlocked on the window grid) they are applied before the
scan, whose steps then run a loop-invariant theta per particle with no selects: a plain rollout.
Otherwise per-step selects start episodes and switch segments where they fall.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct
from jax.sharding import Mesh

from lopt_meta.prng import as_typed_key
from meta_train.engine import keys as keys_lib
from meta_train.engine import sharding
from meta_train.engine import tree as tree_lib
from meta_train.engine import xla_cpu
from meta_train.engine import maths
from meta_train.engine.keys import NOISE, RESET, STEP, pair_step_key  # noqa: F401  (re-exported)
from meta_train.engine.window import segments as segments_lib
from meta_train.engine.window.particles import Particles
from meta_train.engine.window.plan import NoiseSchedule, WindowPlan, plan_window
from meta_train.engine.window.rollout import Restart, rollout
from meta_train.engine.window.segments import Segments, sample_noise  # noqa: F401  (re-exported)
from meta_train.engine.window.sums import window_sums
from tasks.base import UnrolledSystem

PyTree = Any

ANTITHETIC = (1.0, -1.0)


@struct.dataclass
class WorkerState:
  """The persistent state of the workers of one estimator.

  ``P`` is the number of pairs (``num_particles // 2``; for TBPTT, the number of trajectories).

  Attributes:
    states: the system state pytree; leaves ``[P, B, ...]`` with ``B`` stored branches per pair
      (2 for persistent ES: ``theta + eps`` then ``theta - eps``; 1 for truncated ES and TBPTT).
    t: ``[P] int32``, steps taken in the current episode (0: the next step starts an episode; the
      pair may still hold its previous episode's final state, replaced before that step).
    eps: theta-like pytree with leaves ``[P, ...]``, the noise now in use; ``None`` for TBPTT.
    xi: theta-like ``[P, ...]``, the credit when the schedule accumulates one (PES, GPES_K: the
      sum of the current episode's noise blocks); ``None`` otherwise.
    episodes: ``[P] int32``, episodes begun so far by each pair.
    burn_in: ``[P] int32``, the steps each pair ran at start-up to reach its random position.
    length: ``[P] int32``, the length of each pair's current episode (``T`` unless the system's
      episodes vary in length).
  """
  states: PyTree
  t: jax.Array
  eps: PyTree
  xi: PyTree
  episodes: jax.Array
  burn_in: jax.Array
  length: jax.Array


class WindowOut(NamedTuple):
  """What one window returns besides the new worker state (all summed, not averaged).

  Attributes:
    gsum: theta-like, leaves ``[P, ...]``: ``sum_t (L+_t - L-_t) * credit_t`` per pair (windows
      with noise; else ``None``).
    count: ``[P] int32``, valid (finite) steps per pair.
    loss_sum: ``[P, S]``, sum of valid losses per pair and branch.
    nonfinite: ``[P] int32``, steps masked because a loss was not finite.
    resets: ``[P] int32``, episodes begun during the window.
  """
  gsum: PyTree
  count: jax.Array
  loss_sum: jax.Array
  nonfinite: jax.Array
  resets: jax.Array


def init_workers(system: UnrolledSystem, theta: PyTree, key: jax.Array, num_pairs: int,
                 num_branches: int, *, with_noise: bool, accumulate: bool) -> WorkerState:
  """Fresh workers at ``t = 0`` (their first step will start an episode). States are real initial
  states (so shapes and dtypes are those of the running system); noise is zero until drawn."""
  states = jax.vmap(system.init)(jax.random.split(as_typed_key(key), num_pairs))
  length = jax.vmap(system.length_of)(states)
  states = tree_lib.expand_axis(states, 1, num_branches)
  zeros = jax.tree.map(lambda x: jnp.zeros((num_pairs,) + jnp.shape(x), jnp.result_type(x)), theta)
  int0 = jnp.zeros((num_pairs,), jnp.int32)
  return WorkerState(states=states, t=int0, eps=zeros if with_noise else None,
                     xi=zeros if (with_noise and accumulate) else None, episodes=int0, burn_in=int0,
                     length=length)


# ---- Entry points. ----

def run_window(system: UnrolledSystem, theta: PyTree, ws: WorkerState, key: jax.Array,
               num_steps: int, *, signs: tuple[float, ...], sigma: float = 1.0,
               schedule: NoiseSchedule | None = None, mesh: Mesh | None = None,
               general_form: bool = False) -> tuple[WorkerState, WindowOut]:
  """Advances every pair ``W = num_steps`` steps (at most the shortest episode).

  Args:
    system: the unrolled system.
    theta: the meta-parameters.
    ws: the workers; ``ws.states`` leaves are ``[P, S, ...]`` with ``S = len(signs)``.
    key: this window's key.
    num_steps: ``W`` (static).
    signs: branch ``s`` of pair ``i`` runs ``theta + signs[s] * eps[i]``. With noise the first
      two are the antithetic pair ``(1., -1.)`` (truncated ES adds its centre, ``0.``).
    sigma: the noise scale.
    schedule: when noise is drawn and how it is credited; ``None``: no noise (``ws.eps`` unused).
    mesh: a one-axis device mesh (:mod:`meta_train.engine.sharding`): the pairs are split over it;
      ``None`` runs everything on one device.
    general_form: run the general form even when every event falls on the first step (the two
      forms give the same results; the tests compare them).

  Returns:
    ``(new_ws, out)``, see :class:`WindowOut`; ``out.gsum`` is ``None`` without noise.

  Memory: the pairs' states and noise, one fresh episode state per pair, the window's segments
  (their theta, one per particle; general form only) and the window's losses, ``[W, P, S]``.
  """
  _check_window(system, num_steps)
  if schedule is not None and tuple(signs[:2]) != ANTITHETIC:
    raise ValueError(f"a window with noise needs the antithetic branches (1., -1.) first; "
                     f"got signs={signs}")
  window = functools.partial(_estimator_window, system, num_steps=num_steps, signs=signs,
                             sigma=sigma, schedule=schedule, general_form=general_form)
  return _over_pairs(window, mesh, theta, ws, key)


def tbptt_window(system: UnrolledSystem, theta_per_pair: PyTree, ws: WorkerState,
                 key: jax.Array, num_steps: int, *,
                 mesh: Mesh | None = None) -> tuple[WorkerState, WindowOut]:
  """A window without noise in which pair ``i`` runs its own copy ``theta_per_pair[i]`` (leaves
  ``[P, ...]``; ``ws.states`` leaves ``[P, 1, ...]``): truncated backprop differentiates each
  trajectory's window loss with respect to its copy. Otherwise as :func:`run_window`."""
  _check_window(system, num_steps)
  window = functools.partial(_tbptt_window, system, num_steps=num_steps)
  return _over_pairs(window, mesh, theta_per_pair, ws, key, theta_sharded=True)


def burn_in(system: UnrolledSystem, theta: PyTree, ws: WorkerState, key: jax.Array,
            positions: jax.Array, *, signs: tuple[float, ...], sigma: float,
            schedule: NoiseSchedule | None, window_length: int,
            mesh: Mesh | None = None) -> WorkerState:
  """Runs pair ``i`` for ``positions[i] < T`` steps under ``theta`` (+/- its noise), in windows
  of ``window_length`` steps drawing noise as the estimator's windows do, so that the states are
  those the system really reaches: no fake states. An outer ``scan`` over ``ceil((T-1)/W)``
  windows: about ``T`` batched steps, once."""
  W = window_length
  num_windows = -(-(system.horizon - 1) // W) if system.horizon is not None else 0
  key = as_typed_key(key)
  if num_windows == 0:
    return ws

  _check_window(system, W)
  window = functools.partial(_burn_in_window, system, num_steps=W, signs=signs, sigma=sigma,
                             schedule=schedule)

  def one(ws, b):
    steps_left = jnp.clip(positions - b * W, 0, W).astype(jnp.int32)
    return _over_pairs(window, mesh, theta, ws, jax.random.fold_in(key, b), steps_left), None
  ws, _ = jax.lax.scan(one, ws, jnp.arange(num_windows))
  return ws.replace(burn_in=positions.astype(jnp.int32))


def unlock_positions(system: UnrolledSystem, key: jax.Array, num_pairs: int,
                     window_length: int) -> jax.Array:
  """Random positions ``tau: [P] int32`` in the pairs' first episode, for step-unlocking.

  When ``W`` divides ``T`` and every episode lasts ``T`` steps, ``tau`` is uniform on the window
  grid ``{0, W, ..., T - W}`` ("breakstep" training, ES-Single paper App. C.2): each pair then runs
  whole windows of its episodes, no window straddles an episode boundary, and the windows of the
  population tile the horizon. Otherwise (``W`` does not divide ``T``, or episodes vary in
  length) ``tau`` is uniform on ``[0, T)``.
  """
  T, W = system.horizon, window_length
  key = as_typed_key(key)
  if T % W == 0 and system.episode_length is None and system.min_horizon is None:
    return W * jax.random.randint(key, (num_pairs,), 0, T // W, dtype=jnp.int32)
  return jax.random.randint(key, (num_pairs,), 0, T, dtype=jnp.int32)


def step_unlock(system: UnrolledSystem, theta: PyTree, ws: WorkerState, key: jax.Array, *,
                signs: tuple[float, ...], sigma: float, schedule: NoiseSchedule | None,
                window_length: int, mesh: Mesh | None = None) -> WorkerState:
  """Burns each pair in to a random position of its episode (:func:`unlock_positions`) by
  really running it there (:func:`burn_in`; up to ``T - 1`` batched steps, once). For a system
  with no horizon it does nothing: every pair starts at step 0."""
  key = as_typed_key(key)
  if system.horizon is None or system.horizon == 1:
    return ws
  pos_key, run_key = jax.random.split(key)
  tau = unlock_positions(system, pos_key, ws.t.shape[0], window_length)
  return burn_in(system, theta, ws, run_key, tau, signs=signs, sigma=sigma, schedule=schedule,
                 window_length=window_length, mesh=mesh)


# ---- How a window runs, on the pairs of one device. ----

def _check_window(system: UnrolledSystem, num_steps: int) -> None:
  if system.horizon is not None and num_steps > system.shortest_episode:
    raise ValueError(f"a window of {num_steps} steps is longer than the shortest episode "
                     f"({system.shortest_episode} steps)")


def _over_pairs(window, mesh: Mesh | None, theta: PyTree, ws: WorkerState, key: jax.Array,
                *per_pair: jax.Array, theta_sharded: bool = False):
  """``window(theta, ws, pair_keys, *per_pair)`` over all pairs: on one device, or split over
  ``mesh`` with ``shard_map`` (``theta`` replicated unless ``theta_sharded``). The pair keys are
  split from ``key`` globally, so the result does not depend on the mesh."""
  pair_keys = xla_cpu.materialize(keys_lib.split(as_typed_key(key), ws.t.shape[0]))
  if mesh is None:
    return window(theta, ws, pair_keys, *per_pair)
  theta_spec = sharding.SHARDED if theta_sharded else sharding.REPLICATED
  mapped = jax.shard_map(window, mesh=mesh, check_vma=False,
                         in_specs=(theta_spec,) + (sharding.SHARDED,) * (2 + len(per_pair)),
                         out_specs=sharding.SHARDED)
  return mapped(theta, ws, pair_keys, *per_pair)


class _Setup(NamedTuple):
  """What both forms of a window start from."""
  particles: Particles
  plan: WindowPlan
  fresh: PyTree  # fresh episode states, one per pair (leaves [P, ...]): taken where plan.start < W
  fresh_length: jax.Array  # [P] int32, their episodes' lengths
  pair_keys: jax.Array  # [P]


def _setup(system, ws, pair_keys, *, num_steps, signs, schedule, end=None) -> _Setup:
  """The window's plan and its fresh episode states (built once; the pairs that start an
  episode take theirs)."""
  plan = plan_window(ws.t, None if system.horizon is None else ws.length, num_steps=num_steps,
                     schedule=schedule, end=end)
  fresh = jax.vmap(system.init)(pair_step_key(pair_keys, plan.start, RESET))
  return _Setup(Particles(ws.t.shape[0], signs), plan, fresh,
                jax.vmap(system.length_of)(fresh), pair_keys)


def _estimator_window(system, theta, ws, pair_keys, *, num_steps, signs, sigma, schedule,
                      general_form):
  """:func:`run_window` on one device's pairs: the form whose events fall on step 0 when they
  all do, the general one otherwise."""
  s = _setup(system, ws, pair_keys, num_steps=num_steps, signs=signs, schedule=schedule)
  noise = dict(particles=s.particles, sigma=sigma, schedule=schedule)

  def events_at_start(states):
    segments = (segments_lib.unperturbed(theta, ws.eps, ws.xi) if schedule is None else
                segments_lib.at_first_step(s.plan, theta, ws.eps, ws.xi,
                                           pair_step_key(pair_keys, 0, NOISE), **noise))
    return _events_at_start(system, s, segments, states, estimate=schedule is not None)

  def events_anywhere(states):
    segments = (segments_lib.unperturbed(theta, ws.eps, ws.xi) if schedule is None else
                segments_lib.at_every_draw(s.plan, theta, ws.eps, ws.xi, pair_step_key(
                    pair_keys[:, None], s.plan.draws, NOISE), **noise))
    return _events_anywhere(system, s, segments, states, estimate=schedule is not None)

  if general_form:
    out = events_anywhere(s.particles.flat(ws.states))
  else:
    out = jax.lax.cond(s.plan.events_at_start(), events_at_start, events_anywhere,
                       s.particles.flat(ws.states))
  return _close_window(system, ws, s, out)


def _tbptt_window(system, theta_per_pair, ws, pair_keys, *, num_steps):
  """:func:`tbptt_window` on one device's pairs."""
  s = _setup(system, ws, pair_keys, num_steps=num_steps, signs=(0.0,), schedule=None)
  segments = segments_lib.unperturbed(theta_per_pair, ws.eps, ws.xi, particles=s.particles)
  out = jax.lax.cond(
      s.plan.events_at_start(),
      lambda states: _events_at_start(system, s, segments, states, estimate=False),
      lambda states: _events_anywhere(system, s, segments, states, estimate=False),
      s.particles.flat(ws.states))
  return _close_window(system, ws, s, out)


def _burn_in_window(system, theta, ws, pair_keys, steps_left, *, num_steps, signs, sigma,
                    schedule):
  """One window of :func:`burn_in` on one device's pairs: pair ``i`` takes ``steps_left[i]``
  steps, drawing noise as the estimator's windows do, and estimates nothing."""
  s = _setup(system, ws, pair_keys, num_steps=num_steps, signs=signs, schedule=schedule,
             end=steps_left)
  segments = (segments_lib.unperturbed(theta, ws.eps, ws.xi) if schedule is None else
              segments_lib.at_every_draw(s.plan, theta, ws.eps, ws.xi, pair_step_key(
                  pair_keys[:, None], s.plan.draws, NOISE), particles=s.particles, sigma=sigma,
                  schedule=schedule))
  out = _events_anywhere(system, s, segments, s.particles.flat(ws.states), estimate=False,
                         stop=True)
  return _close_window(system, ws, s, out)[0]


class _FormOut(NamedTuple):
  """What either form of a window returns (one structure for both branches of the cond)."""
  states: PyTree  # flat, leaves [P * S, ...]
  count: jax.Array  # [P] int32, valid steps
  loss: jax.Array  # [P, S], sum of valid losses
  gsum: PyTree  # theta-like [P, ...] or None
  eps: PyTree  # the noise in use after the window
  xi: PyTree  # the credit after the window (accumulating schedules)


def _events_at_start(system, s: _Setup, segments: Segments, states, *, estimate) -> _FormOut:
  """Every event falls on step 0: episodes start before the scan, whose steps run each
  particle's theta as a loop invariant, with no selects (XLA hoists what depends on theta)."""
  p = s.particles
  states = tree_lib.where_leading(p.per_particle(s.plan.start == 0), p.per_particle(s.fresh),
                                  states)
  theta = segments.theta[0]
  states, losses = rollout(_step_fn(system, s, segments.theta_axis), states, s.plan.num_steps,
                           lambda j: theta)
  sums = window_sums(losses, num_segments=1 if estimate else 0)
  return _form_out(states, sums, segments, estimate)


def _events_anywhere(system, s: _Setup, segments: Segments, states, *, estimate,
                     stop: bool = False) -> _FormOut:
  """Events on any step: per-step selects (fused into the step) start each pair's episode at
  ``plan.start`` and switch its segment at its draws. With ``stop``, pair ``i`` takes only its
  first ``plan.end[i]`` steps."""
  p, plan, W = s.particles, s.plan, s.plan.num_steps
  restart = Restart(*xla_cpu.materialize((p.per_particle(s.fresh), p.per_particle(plan.start))))
  stop_at = xla_cpu.materialize(p.per_particle(plan.end)) if stop else None
  states, losses = rollout(_step_fn(system, s, segments.theta_axis), states, W,
                           segments.theta_at, restart=restart, stop=stop_at)
  j = jnp.arange(W, dtype=jnp.int32)[:, None]  # [W, 1]
  num_segments = segments.num_segments if estimate else 0
  sums = window_sums(losses, num_segments=num_segments, taken=(j < plan.end) if stop else None,
                     segment=segments.index(j) if num_segments > 1 else None)
  return _form_out(states, sums, segments, estimate)


def _step_fn(system, s: _Setup, theta_axis):
  """``step(theta, states, j)``: every particle (flat) takes window step ``j`` with its pair's
  step key; losses ``[P, S]`` float32."""
  p = s.particles

  def step(theta, states, j):
    keys = p.per_particle(pair_step_key(s.pair_keys, j, STEP))
    new_states, losses = jax.vmap(system.step, in_axes=(theta_axis, 0, 0))(theta, states, keys)
    return new_states, losses.astype(jnp.float32).reshape(p.num_pairs, p.num_branches)
  return step


def _form_out(states, sums, segments: Segments, estimate: bool) -> _FormOut:
  gsum = maths.credited_sums(sums.dl, segments.credit) if estimate else None
  return _FormOut(states, sums.count.astype(jnp.int32), sums.loss, gsum, segments.eps,
                  segments.xi)


def _close_window(system, ws: WorkerState, s: _Setup,
                  out: _FormOut) -> tuple[WorkerState, WindowOut]:
  """The workers after the window (positions, episode lengths, noise) and its sums."""
  plan = s.plan
  resets = plan.began.astype(jnp.int32)
  length = jnp.where(plan.began, s.fresh_length, ws.length)
  t = jnp.where(plan.began, plan.end - plan.start, ws.t + plan.end)
  if system.horizon is not None:
    t = jnp.where(t >= length, 0, t)
  new_ws = ws.replace(states=s.particles.unflat(out.states), t=t, eps=out.eps, xi=out.xi,
                      episodes=ws.episodes + resets, length=length)
  return new_ws, WindowOut(gsum=out.gsum, count=out.count, loss_sum=out.loss,
                           nonfinite=plan.end - out.count, resets=resets)
