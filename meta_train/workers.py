"""Particle workers: persistent states, antithetic pairing, episode resets, step-unlocking.

Every estimator in :mod:`meta_train.estimators` drives its particles through :func:`run_window`,
one ``jax.lax.scan`` over the steps of a window, batched over ``P`` pairs (``jax.vmap``) and over
the ``S`` branches of each pair (``theta + eps``, ``theta - eps``, and for truncated ES the
unperturbed centre). Nothing runs in a Python loop over particles or steps.

Conventions (see DESIGN §2 and §6):

* Positions. ``t[i]`` counts the steps pair ``i`` has taken in its current episode; ``t == 0``
  means the next step starts a new episode. Episodes last ``T`` steps, or, for systems whose
  episodes vary in length, what ``system.episode_length`` says of the episode's fresh state.
  Before the first step of an episode the pair's state is replaced by ``system.init(reset_key)``
  and (for ES) its noise is resampled; PES/GPES accumulators restart. So the loss of an episode's
  last step is still paired with the old noise, and a window that straddles an episode boundary
  switches noise exactly at the boundary.
* Randomness. Window key -> ``jax.random.split(key, P)`` pair keys -> at the window's step ``j``
  ``fold_in(pair_key, 3 j + c)`` for the reset (c=0), noise (c=1) and step (c=2) keys. All
  branches of a pair use the same keys: the same initial state, the same data, common random
  numbers.
* Credit. Each pair carries ``credit``: the noise now in use (NRES, TES) or the sum of the
  episode's noise blocks so far (PES, GPES_K). ``dl = L+_t - L-_t`` is summed per pair while the
  credit is constant and multiplied by it once: the same sum as per step, at a fraction of the work.
* Masking. A (pair, step) whose losses are not all finite contributes nothing and is counted.

How a window runs. Every event of a window (an episode start, a fresh noise draw) is known from
the pairs' positions at its start, so it is worked out before the scan, vectorized: the keys of
each pair's episode start (at most one: a window is no longer than the shortest episode) and
noise draws, and a small table of *segments*, the stretches of steps with constant noise
(segment 0 carries on from the previous window; each draw opens the next), with each segment's
noise and credit. In the scan, the steps on which some pair has an event take one real branch
(``lax.cond``) that builds the fresh states and switches the noise; every step then steps all
branches and records the losses ``[W, P, S]``. Masking, counts and the credit sums are done on
those losses after the scan, at once.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh

from meta_train import sharding
from meta_train import tree as tree_lib
from tasks.base import UnrolledSystem

PyTree = Any


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
    xi: theta-like ``[P, ...]``, the sum of the current episode's noise blocks (PES, GPES_K);
      ``None`` for estimators that do not accumulate.
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


class NoiseSchedule(NamedTuple):
  """When a pair draws fresh noise, besides at the start of every episode (static settings).

  Attributes:
    every_window: also at the first step of each window (PES, truncated ES).
    block: also whenever ``t % block == 0`` (GPES_K with ``block=K``, counted from episode start).
    accumulate: the credit is the sum of the episode's noise blocks (PES, GPES_K) rather than the
      noise in use (NRES, truncated ES).
  """
  every_window: bool = False
  block: int | None = None
  accumulate: bool = False


class WindowOut(NamedTuple):
  """What one window returns besides the new worker state (all summed, not averaged).

  Attributes:
    gsum: theta-like, leaves ``[P, ...]``: ``sum_t (L+_t - L-_t) * credit_t`` per pair (ES only,
      else ``None``).
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


RESET, NOISE, STEP = 0, 1, 2  # what a key is for


def pair_step_key(pair_key: jax.Array, j, purpose: int) -> jax.Array:
  """The key of a pair at the window's step ``j`` for ``purpose`` (RESET, NOISE or STEP):
  ``fold_in(pair_key, 3 j + purpose)`` (one key; vmap it for many)."""
  return jax.random.fold_in(pair_key, 3 * j + purpose)


def sample_noise(keys: jax.Array, theta: PyTree, sigma: float) -> PyTree:
  """``sigma * N(0, I)`` noise shaped like ``theta``, one draw per key: leaves ``[P, ...]``.

  One normal draw of ``theta``'s flattened size per key (one random-number call for the whole
  pytree, however many leaves it has), unflattened into ``theta``'s structure and dtypes.
  """
  flat, unravel = ravel_pytree(theta)
  draws = jax.vmap(lambda k: jax.random.normal(k, flat.shape, flat.dtype))(keys)
  return jax.vmap(unravel)(sigma * draws)


def init_workers(system: UnrolledSystem, theta: PyTree, key: jax.Array, num_pairs: int,
                 num_branches: int, *, with_noise: bool, accumulate: bool) -> WorkerState:
  """Fresh workers at ``t = 0`` (their first step will start an episode). States are real initial
  states (so shapes and dtypes are those of the running system); noise is zero until drawn."""
  states = jax.vmap(system.init)(jax.random.split(key, num_pairs))
  length = jax.vmap(system.length_of)(states)
  states = tree_lib.expand_axis(states, 1, num_branches)
  zeros = jax.tree.map(lambda x: jnp.zeros((num_pairs,) + jnp.shape(x), jnp.result_type(x)), theta)
  int0 = jnp.zeros((num_pairs,), jnp.int32)
  return WorkerState(states=states, t=int0, eps=zeros if with_noise else None,
                     xi=zeros if (with_noise and accumulate) else None, episodes=int0, burn_in=int0,
                     length=length)


def _max_draws(num_steps: int, schedule: NoiseSchedule) -> int:
  """A static bound on the noise draws of one pair in one window of ``num_steps <= T`` steps."""
  bound = 1  # one episode start at most
  if schedule.every_window:
    bound += 1
  if schedule.block is not None:
    bound += -(-num_steps // schedule.block) + 1
  return min(bound, num_steps)


def _take_segment(table: PyTree, seg: jax.Array) -> PyTree:
  """Rows ``table[i, seg[i]]``: leaves ``[P, S, ...]`` -> ``[P, ...]`` (a chain of selects: S is
  small, and selects fuse with what consumes them where a gather would not)."""
  def take(x):
    idx = jnp.reshape(seg, seg.shape + (1,) * (x.ndim - 2))
    out = x[:, 0]
    for e in range(1, x.shape[1]):
      out = jnp.where(idx == e, x[:, e], out)
    return out
  return jax.tree.map(take, table)


def run_window(system: UnrolledSystem, theta: PyTree, ws: WorkerState, key: jax.Array,
               num_steps: int, *, signs: tuple[float, ...], sigma: float = 1.0,
               schedule: NoiseSchedule | None = None, theta_per_pair: bool = False,
               active_steps: jax.Array | None = None, estimate_grad: bool = True,
               mesh: Mesh | None = None) -> tuple[WorkerState, WindowOut]:
  """Advances every pair ``num_steps`` steps: one ``lax.scan``, vmapped over pairs and branches.

  Args:
    system: the unrolled system.
    theta: the meta-parameters; with ``theta_per_pair`` its leaves carry a leading ``[P]`` axis
      (truncated backprop differentiates each pair's copy).
    ws: the workers; ``ws.states`` leaves are ``[P, S, ...]`` with ``S = len(signs)``.
    key: this window's key.
    num_steps: ``W``, the steps to run (static); at most the horizon.
    signs: branch ``s`` of pair ``i`` runs ``theta + signs[s] * eps[i]``; ``(1., -1.)`` for an
      antithetic pair, ``(1., -1., 0.)`` for truncated ES, ``(0.,)`` with no noise.
    sigma: the noise scale.
    schedule: when to draw noise (``None``: no noise; ``ws.eps`` is then unused).
    theta_per_pair: see ``theta``.
    active_steps: ``[P] int32`` or ``None``: pair ``i`` takes only its first ``active_steps[i]``
      steps and stays put after (the burn-in that step-unlocks workers).
    estimate_grad: accumulate the ES credit (off for the burn-in).
    mesh: a one-axis device mesh (see :mod:`meta_train.sharding`): the pairs are split over it
      with ``shard_map``; ``None`` runs everything on one device.

  Returns:
    ``(new_ws, out)``; see :class:`WindowOut`. ``out.gsum`` is ``None`` unless the first two
    branches are an antithetic pair (``signs[:2] == (1., -1.)``) with noise.

  Memory: the states and noise of the pairs, plus the window's losses ``[W, P, S]`` (floats).
  """
  if system.horizon is not None and num_steps > system.shortest_episode:
    raise ValueError(f"a window of {num_steps} steps is longer than the shortest episode "
                     f"({system.shortest_episode} steps)")
  if theta_per_pair and schedule is not None:
    raise ValueError("theta_per_pair is for noise-free rollouts (truncated backprop)")
  pair_keys = jax.random.split(key, ws.t.shape[0])  # global: the same with or without a mesh
  local = functools.partial(_run_window_local, system, num_steps=num_steps, signs=signs,
                            sigma=sigma, schedule=schedule, theta_per_pair=theta_per_pair,
                            estimate_grad=estimate_grad)
  if mesh is None:
    return local(theta, ws, pair_keys, active_steps)
  theta_spec = sharding.SHARDED if theta_per_pair else sharding.REPLICATED
  mapped = jax.shard_map(local, mesh=mesh, check_vma=False,
                         in_specs=(theta_spec, sharding.SHARDED, sharding.SHARDED,
                                   sharding.SHARDED),
                         out_specs=(sharding.SHARDED, sharding.SHARDED))
  return mapped(theta, ws, pair_keys, active_steps)


def _run_window_local(system, theta, ws, pair_keys, active_steps, *, num_steps, signs, sigma,
                      schedule, theta_per_pair, estimate_grad):
  """:func:`run_window` on the pairs of one device (all of them, without a mesh)."""
  num_pairs = ws.t.shape[0]
  horizon = system.horizon
  es = (estimate_grad and schedule is not None and len(signs) >= 2
        and tuple(signs[:2]) == (1.0, -1.0))
  signs_arr = jnp.asarray(signs, jnp.float32)

  # ---- Everything the window will need, worked out before the scan ([W, P] unless noted). ----
  steps = jnp.arange(num_steps, dtype=jnp.int32)
  active = (jnp.ones((num_steps, num_pairs), bool) if active_steps is None
            else steps[:, None] < active_steps[None, :])
  # A window is no longer than the shortest episode, so each pair starts at most one episode in
  # it: at step j_star (0 if the pair is at t == 0; never for a system that never resets).
  if horizon is None:
    j_star = jnp.where(ws.t == 0, 0, num_steps)
  else:
    j_star = jnp.where(ws.t == 0, 0, ws.length - ws.t)
  after = steps[:, None] >= j_star[None, :]
  # pos: the position in the episode before each step.
  pos = jnp.where(after, steps[:, None] - j_star[None, :], ws.t[None, :] + steps[:, None])
  start = (steps[:, None] == j_star[None, :]) & active

  draw = seg = None
  num_segments = 1
  if schedule is not None:
    draw = start
    if schedule.every_window:
      draw = draw | ((steps[:, None] == 0) & active)
    if schedule.block is not None:
      draw = draw | ((pos % schedule.block == 0) & active)
    seg = jnp.cumsum(draw, axis=0, dtype=jnp.int32)  # segment of each step; 0 = carried over
    num_segments = 1 + _max_draws(num_steps, schedule)

  # The steps whose keys are needed before the scan: each pair's (at most one) episode start,
  # and the step that opens each segment. One batched key derivation for all of them.
  event_steps = [jnp.argmax(start, axis=0)]
  for e in range(1, num_segments):  # static and small: 1 for NRES, 2 for PES
    event_steps.append(jnp.argmax(draw & (seg == e), axis=0))
  event_steps = jnp.stack(event_steps, axis=1)  # [P, E]
  purposes = jnp.asarray([RESET] + [NOISE] * (num_segments - 1), jnp.int32)
  event_keys = jax.vmap(jax.vmap(pair_step_key, in_axes=(None, 0, 0)), in_axes=(0, 0, None))(
      pair_keys, event_steps, purposes)  # [P, E]: one batched hash for all of them
  reset_keys = event_keys[:, 0]

  eps_table = None
  if schedule is not None:
    eps_rows, credit_rows = [ws.eps], [ws.xi if schedule.accumulate else ws.eps]
    draws = jax.vmap(lambda k: sample_noise(k, theta, sigma))(event_keys[:, 1:])  # [P, E-1]
    for e in range(1, num_segments):
      new = jax.tree.map(lambda x: x[:, e - 1], draws)
      eps_rows.append(new)
      if schedule.accumulate:
        restarts = jnp.take_along_axis(start, event_steps[None, :, e], axis=0)[0]
        credit_rows.append(tree_lib.where_leading(
            restarts, new, jax.tree.map(jnp.add, credit_rows[-1], new)))
      else:
        credit_rows.append(new)
    stack = lambda rows: jax.tree.map(lambda *xs: jnp.stack(xs, axis=1), *rows)
    eps_table, credit_table = stack(eps_rows), stack(credit_rows)  # leaves [P, S, ...]

  # ---- The scan: per step, only what must happen per step. ----
  def body(carry, xs):
    states, eps, length = carry
    j, any_event_j = xs

    # Episode starts and noise draws are rare (a few per pair per window): one real branch,
    # taken only on the steps where some pair has one, is far cheaper than selects every step.
    # Fresh states are made inside it, so nothing of them is materialized on ordinary steps.
    def event(args):
      states, eps, length = args
      fresh = jax.vmap(system.init)(reset_keys)
      states = tree_lib.where_leading(start[j], tree_lib.expand_axis(fresh, 1, len(signs)), states)
      length = jnp.where(start[j], jax.vmap(system.length_of)(fresh), length)
      if eps_table is not None:
        eps = tree_lib.where_leading(draw[j], _take_segment(eps_table, seg[j]), eps)
      return states, eps, length
    states, eps, length = jax.lax.cond(any_event_j, event, lambda a: a, (states, eps, length))
    k_step_j = jax.vmap(pair_step_key, in_axes=(0, None, None))(pair_keys, j, STEP)

    def pair_step(theta_i, eps_i, states_i, key_i):
      def branch(sign, s):
        th = theta_i if eps_i is None else jax.tree.map(lambda a, e: a + sign * e, theta_i, eps_i)
        return system.step(th, s, key_i)
      return jax.vmap(branch)(signs_arr, states_i)
    new_states, losses = jax.vmap(pair_step, in_axes=(0 if theta_per_pair else None, 0, 0, 0))(
        theta, eps, states, k_step_j)
    if active_steps is not None:  # inactive pairs stay exactly where they were
      new_states = tree_lib.where_leading(active[j], new_states, states)
    return (new_states, eps, length), losses.astype(jnp.float32)

  xs = (steps, jnp.any(start if draw is None else (start | draw), axis=1))
  eps0 = ws.eps if schedule is not None else None
  (states, eps_last, length), losses = jax.lax.scan(body, (ws.states, eps0, ws.length), xs)

  # Bookkeeping on the window's losses at once ([W, P, S] floats), not step by step.
  finite = jnp.all(jnp.isfinite(losses), axis=2) & active
  safe = jnp.where(finite[..., None], losses, 0.0)
  count = jnp.sum(finite, axis=0, dtype=jnp.int32)
  loss_sum = jnp.sum(safe, axis=0)
  nonfinite = jnp.sum(active & ~finite, axis=0, dtype=jnp.int32)

  # ---- Close the window: credit, positions, the noise now in use. ----
  gsum = None
  if es:
    # dl summed per pair and segment, then times each segment's credit: sum_t dl_t * credit_t.
    dl = safe[..., 0] - safe[..., 1]  # [W, P]
    dl_seg = jnp.stack([jnp.sum(jnp.where(seg == e, dl, 0.0), axis=0)
                        for e in range(num_segments)], axis=1)  # [P, S]
    gsum = jax.tree.map(lambda c: jnp.einsum("ps,ps...->p...", dl_seg, c), credit_table)
  taken = jnp.sum(active, axis=0, dtype=jnp.int32)
  resets = jnp.sum(start, axis=0, dtype=jnp.int32)
  t = jnp.where(resets > 0, taken - j_star, ws.t + taken)
  if horizon is not None:
    t = jnp.where(t >= length, 0, t)
  eps, xi = ws.eps, ws.xi
  if schedule is not None:
    eps = eps_last
    if schedule.accumulate:  # cumsum: the segment of the last step is the last one opened
      xi = _take_segment(credit_table, seg[-1])
  new_ws = ws.replace(states=states, t=t, eps=eps, xi=xi, episodes=ws.episodes + resets,
                      length=length)
  return new_ws, WindowOut(gsum=gsum, count=count, loss_sum=loss_sum, nonfinite=nonfinite,
                           resets=resets)


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
  if num_windows == 0:
    return ws

  def one(ws, b):
    steps_left = jnp.clip(positions - b * W, 0, W).astype(jnp.int32)
    ws, _ = run_window(system, theta, ws, jax.random.fold_in(key, b), W, signs=signs, sigma=sigma,
                       schedule=schedule, active_steps=steps_left, estimate_grad=False,
                       mesh=mesh)
    return ws, None
  ws, _ = jax.lax.scan(one, ws, jnp.arange(num_windows))
  return ws.replace(burn_in=positions.astype(jnp.int32))


def step_unlock(system: UnrolledSystem, theta: PyTree, ws: WorkerState, key: jax.Array, *,
                signs: tuple[float, ...], sigma: float, schedule: NoiseSchedule | None,
                window_length: int, mesh: Mesh | None = None) -> WorkerState:
  """Burns each pair in to a uniformly random position ``tau_i in [0, T)`` of its episode
  (see :func:`burn_in`; it costs up to ``T - 1`` batched steps, once). For a system with no
  horizon it does nothing: every pair starts at step 0."""
  if system.horizon is None or system.horizon == 1:
    return ws
  pos_key, run_key = jax.random.split(key)
  tau = jax.random.randint(pos_key, ws.t.shape, 0, system.horizon, dtype=jnp.int32)
  return burn_in(system, theta, ws, run_key, tau, signs=signs, sigma=sigma, schedule=schedule,
                 window_length=window_length, mesh=mesh)
