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
  numbers. (Computed by :mod:`meta_train.keys`: bit-identical to ``jax.random``, fused.) Every
  function here takes a typed key or a raw ``uint32[2]`` one and hands the system typed keys.
* Credit. Each pair carries ``credit``: the noise now in use (NRES, TES) or the sum of the
  episode's noise blocks so far (PES, GPES_K). ``dl = L+_t - L-_t`` (formed per step) is summed
  per pair while the credit is constant and multiplied by it once: the same sum as per step, at
  a fraction of the work.
* Masking. A (pair, step) whose losses are not all finite contributes nothing and is counted.
* Step-unlocking. Pairs are burned in to random positions of their first episode: on the window
  grid ``{0, W, 2W, ...}`` when ``W`` divides ``T`` (so that no window straddles an episode
  boundary), anywhere in ``[0, T)`` otherwise (:func:`unlock_positions`).

How a window runs. Every event of a window (an episode start, a fresh noise draw) is known from
the pairs' positions at its start, in closed form. Fresh episode states are built once per window
(the pairs that start an episode take theirs). Then one of two forms runs (a ``lax.cond`` per
window; each form works out only what it needs):

* every event on the window's first step (the rule when ``W`` divides ``T``, thanks to
  step-unlocking on the window grid): step 0's noise is drawn (one vector per pair) and the
  events are applied before the scan, whose steps run the ``P * S`` particles as one flat batch
  with a loop-invariant theta per particle and no selects: the kernels of a plain rollout;
* otherwise the window's noise draws and a small table of *segments* (the stretches of steps
  with constant noise: segment 0 carries on from the previous window, each draw opens the next,
  with its perturbed theta and credit) are built first, and per-step selects (fused into the
  step) start episodes and switch noise where they fall. Its steps cost two to three plain
  steps on a small system (the select of each particle's theta and state, and whatever the
  system computes from theta, are recomputed per step where a plain rollout hoists them).

The scan stores each step's losses (``[W, P, S]``, as a plain rollout does) and the window's
per-pair sums (valid steps, each branch's loss, ``dl`` per segment) are products over the steps
after it, masked only when a loss was not finite (see ``run_scan`` in :func:`run_window`). On
CPU, XLA fuses a kernel into each of its consumers and recomputes it per element, runs a
reduction over a leading axis several times slower than a matrix-vector product, and pays for
every small kernel: the layout of this module follows from measurements, see
``benchmarks/overhead.py``.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh

from lopt_meta.prng import as_typed_key
from meta_train import keys as keys_lib
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
  ``fold_in(pair_key, 3 j + purpose)``; ``pair_key`` and ``j`` broadcast (``[P]`` keys and one
  step, or ``[P, 1]`` keys and ``[P, E]`` steps)."""
  return keys_lib.fold_in(pair_key, 3 * jnp.asarray(j, jnp.int32) + purpose)


def sample_noise(keys: jax.Array, theta: PyTree, sigma: float) -> PyTree:
  """``sigma * N(0, I)`` noise shaped like ``theta``, one draw per key: leaves ``keys.shape + ...``.

  One normal draw of ``theta``'s flattened size per key (``jax.random.normal(key, (size,))``, one
  fused computation for all keys and leaves), unflattened into ``theta``'s structure and dtypes.
  """
  flat, unravel = ravel_pytree(theta)
  draws = sigma * keys_lib.normal(keys, flat.shape[0], flat.dtype)
  for _ in range(keys.ndim):
    unravel = jax.vmap(unravel)
  return unravel(draws)


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


def _max_draws(num_steps: int, schedule: NoiseSchedule) -> int:
  """A static bound on the noise draws of one pair in one window of ``num_steps <= T`` steps."""
  bound = 1  # one episode start at most
  if schedule.every_window:
    bound += 1
  if schedule.block is not None:
    bound += -(-num_steps // schedule.block) + 1
  return min(bound, num_steps)


def _draw_steps(t: jax.Array, start: jax.Array, end: jax.Array, num_steps: int,
                schedule: NoiseSchedule) -> jax.Array:
  """The steps of the window at which each pair draws fresh noise: ``[P, M]``, ascending, padded
  with ``num_steps`` (no draw); ``M = _max_draws``.

  Args:
    t: ``[P]``, the pairs' positions in their episodes at the window's start.
    start: ``[P]``, the step at which each pair starts an episode (``num_steps``: none).
    end: ``[P]``, the steps each pair takes (``num_steps`` except in a burn-in).

  A pair draws at its episode start, at step 0 if ``schedule.every_window``, and, with
  ``schedule.block = K``, at every step whose position in its episode is a multiple of ``K``
  (positions ``t + j`` before the episode start, ``j - start`` after it); never at or after
  ``end``. Worked out in closed form, one small elementwise pass per draw (no scan over steps).
  """
  W = num_steps
  old_end = jnp.minimum(start, end)  # steps [0, old_end) are in the pair's current episode
  d = jnp.full_like(t, -1)  # the previous draw
  columns = []
  for _ in range(_max_draws(W, schedule)):  # the next draw after d: the earliest candidate
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


def _select(index: jax.Array, rows: PyTree) -> PyTree:
  """Row ``index[i]`` of ``rows`` for each pair: leaves ``[P, E, ...]`` -> ``[P, ...]`` (a chain
  of selects: ``E`` is small, and selects fuse with what consumes them where a gather would
  not)."""
  def take(x):
    idx = jnp.reshape(index, index.shape + (1,) * (x.ndim - 2))
    out = x[:, 0]
    for e in range(1, x.shape[1]):
      out = jnp.where(idx == e, x[:, e], out)
    return out
  return jax.tree.map(take, rows)


def events_at_start_only(start: jax.Array, draws: jax.Array | None, num_steps: int) -> jax.Array:
  """Whether every episode start (``start: [P]``) and noise draw (``draws: [P, M]``) of a window
  falls on its first step (``num_steps``: none), so that no pair changes episode or noise inside
  it: a scalar bool."""
  ok = (start == 0) | (start == num_steps)
  if draws is not None:
    ok = ok & jnp.all((draws == 0) | (draws == num_steps), axis=1)
  return jnp.sum(jnp.where(ok, 0, 1)) == 0  # one kernel on CPU, where jnp.all takes three


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

  Memory: the states and noise of the pairs, one fresh episode state per pair (built before the
  scan, see the module docstring), the window's noise table (events form only) and the window's
  losses, ``[W, P, S]`` floats (a plain rollout that returns its losses stores as many).
  """
  if system.horizon is not None and num_steps > system.shortest_episode:
    raise ValueError(f"a window of {num_steps} steps is longer than the shortest episode "
                     f"({system.shortest_episode} steps)")
  if theta_per_pair and schedule is not None:
    raise ValueError("theta_per_pair is for noise-free rollouts (truncated backprop)")
  key = as_typed_key(key)  # a trace-time check: typed keys reach the system either way
  pair_keys = _materialize(keys_lib.split(key, ws.t.shape[0]))  # global: with or without a mesh
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


def _materialize(tree: PyTree) -> PyTree:
  """``tree``, computed once by kernels of its own. Keys and noise are chains of threefry hashes;
  fused into their consumers, XLA recomputes the chain per consumed element (several times the
  cost: a Lorenz window's noise went from about 6 to 27 microseconds on CPU)."""
  return jax.lax.optimization_barrier(tree)


def _run_window_local(system, theta, ws, pair_keys, active_steps, *, num_steps, signs, sigma,
                      schedule, theta_per_pair, estimate_grad):
  """:func:`run_window` on the pairs of one device (all of them, without a mesh)."""
  W = num_steps
  num_pairs, num_branches = ws.t.shape[0], len(signs)
  es = (estimate_grad and schedule is not None and num_branches >= 2
        and tuple(signs[:2]) == (1.0, -1.0))
  signs_arr = jnp.asarray(signs, jnp.float32)

  # Inside the scans the P pairs x S branches run as one flat batch of P * S particles (leaves
  # [P * S, ...]; the reshapes are free): a step then sees the shapes a plain vmapped rollout of
  # N particles sees, and XLA emits the same kernels for it (a nested [P, S, ...] batch made it
  # emit slower loops for small per-particle states: toy2d steps cost twice a plain rollout's).
  def flat(tree):  # [P, S, ...] -> [P * S, ...]
    return jax.tree.map(lambda x: x.reshape((num_pairs * num_branches,) + x.shape[2:]), tree)

  def unflat(tree):  # [P * S, ...] -> [P, S, ...]
    return jax.tree.map(lambda x: x.reshape((num_pairs, num_branches) + x.shape[1:]), tree)

  def per_particle(tree):  # [P, ...] -> [P * S, ...], each pair's row repeated for its branches
    return jax.tree.map(
        lambda a: jnp.broadcast_to(a[:, None], (a.shape[0], num_branches) + a.shape[1:])
        .reshape((num_pairs * num_branches,) + a.shape[1:]), tree)

  def unperturbed():  # theta for the flat particles with no noise, and its vmap axis
    return (per_particle(theta), 0) if theta_per_pair else (theta, None)

  def perturbed(eps, axis):  # theta + signs[s] * eps, the branches inserted at `axis` of eps
    def one(th, e):
      e = jnp.expand_dims(e, axis)
      return th + signs_arr.reshape((1,) * axis + (-1,) + (1,) * (e.ndim - axis - 1)) * e
    return jax.tree.map(one, theta, eps)

  def stepped(th, th_axis, states, j):  # every particle (flat states) takes step j
    keys = per_particle(pair_step_key(pair_keys, j, STEP))  # both branches: the pair's key
    new_states, losses = jax.vmap(system.step, in_axes=(th_axis, 0, 0))(th, states, keys)
    return new_states, losses.astype(jnp.float32).reshape(num_pairs, num_branches)

  # ---- The window's events, per pair, in closed form before the scan. ----
  end = (jnp.full_like(ws.t, W) if active_steps is None
         else jnp.clip(active_steps, 0, W).astype(jnp.int32))
  # A window is no longer than the shortest episode, so each pair starts at most one episode in
  # it: at step `start` (0 if the pair is at t == 0; W means none).
  if system.horizon is None:
    j_star = jnp.where(ws.t == 0, 0, W)
  else:
    j_star = jnp.where(ws.t == 0, 0, ws.length - ws.t)
  start = jnp.where(j_star < end, j_star, W)
  began = start < W
  # Fresh episode states, one per pair, built once per window (the few pairs that start an
  # episode take theirs; see the scans below).
  fresh = jax.vmap(system.init)(pair_step_key(pair_keys, start, RESET))
  fresh_length = jax.vmap(system.length_of)(fresh)
  # The steps at which pairs draw noise ([P, M], see _draw_steps): needed up front only to tell
  # whether GPES_K's block draws all fall on the window's first step.
  draws = None
  if schedule is not None and schedule.block is not None:
    draws = _draw_steps(ws.t, start, end, W, schedule)

  def run_scan(states, theta_of, th_axis, num_segments, *, resets=False, valid_of=None,
               seg_of=None):
    """``W`` steps, and what the window sums per pair.

    Args:
      states: the particles' states before step 0, flat ``[P * S, ...]``.
      theta_of, th_axis: theta of step ``j`` is ``theta_of(j)``, and its vmap axis.
      num_segments: the noise segments of the window.
      resets: the events form: a per-step select (fused into the step) starts pair ``i``'s
        episode at step ``start[i]``. Its operands, the fresh states and ``start`` repeated for
        the branches, are materialized once before the scan (left as broadcasts, they were
        re-laid out inside every step).
      valid_of, seg_of: for the steps ``j: [W, 1]``, which pairs' steps count (``[W, P]``;
        ``None``: all) and their noise segments (``[W, P]``; needed with several segments).

    Returns the new states and the sums ``[Q, P]``: valid steps, then the loss of each branch,
    then (ES) ``dl = L+ - L-`` of the steps of each noise segment.

    How the sums are taken (each choice measured on CPU, where they decide the cost of a small
    system's window): the scan stores each step's losses (``[W, P, S]``, in the kernel that
    computes them, as a plain rollout stores its own); after it, one product sums them over the
    steps and one more sums ``dl``, formed step by step from the table. When every loss sum is
    finite so was every term, and a window with one noise segment is done; otherwise, and for
    windows with several segments or pairs that stop early (a burn-in), masked and per-segment
    sums are taken from the table, one elementwise pass and one product per row (one table
    of interleaved columns cost 30 to 70 microseconds per Lorenz window of about 100 steps, as
    much as 30 steps: XLA builds such a table element by element). Summed in the scan's carry
    instead, XLA fused the loss into the sums, whose every row reads it, recomputing each
    particle's step per row; storing ``dl`` beside the losses made every step's kernel
    interleave columns, a third of a plain Lorenz step; and a reduction over the steps runs
    several times slower than the product.
    """
    segments = num_segments if es else 0
    if resets:
      fresh_p, start_p = _materialize((per_particle(fresh), per_particle(start)))
    if active_steps is not None:
      end_p = _materialize(per_particle(end))

    def body(carry, _):
      states, j = carry
      if resets:
        states = tree_lib.where_leading(j == start_p, fresh_p, states)
      new_states, losses = stepped(theta_of(j), th_axis, states, j)
      if active_steps is not None:  # inactive pairs stay exactly where they were
        new_states = tree_lib.where_leading(j >= end_p, states, new_states)
      return (new_states, j + 1), losses
    # The step counter rides in the carry: read from a scanned array, it would be sliced inside
    # every fused step kernel.
    (states, _), losses = jax.lax.scan(body, (states, jnp.int32(0)), None, length=W)  # [W, P, S]

    def sum_steps(x):  # [W, P, ...] -> [P, ...], summed over the steps
      flat_x = x.reshape(W, -1)
      total = jnp.matmul(jnp.ones((W,), flat_x.dtype), flat_x,
                         precision=jax.lax.Precision.HIGHEST)
      return total.reshape(x.shape[1:])

    def masked(_):
      j = jnp.arange(W, dtype=jnp.int32)[:, None]  # [W, 1]
      finite = valid_of(j) if valid_of is not None else jnp.ones((W, num_pairs), bool)
      for b in range(num_branches):  # an explicit & over branches fuses where a reduction won't
        finite = finite & jnp.isfinite(losses[..., b])
      safe = jnp.where(finite[..., None], losses, 0.0)  # [W, P, S]
      rows = [sum_steps(finite.astype(jnp.float32))[None], sum_steps(safe).T]
      if segments == 1:
        rows.append(sum_steps(safe[..., 0] - safe[..., 1])[None])
      elif segments > 1:
        dl, seg = safe[..., 0] - safe[..., 1], seg_of(j)  # [W, P]
        rows += [sum_steps(jnp.where(seg == e, dl, 0.0))[None] for e in range(segments)]
      return jnp.concatenate(rows, axis=0)  # [Q, P]

    if active_steps is not None or segments > 1:
      return states, masked(None)
    loss_sums = sum_steps(losses)  # [P, S]

    def unmasked(_):
      out = [jnp.full((num_pairs,), W, jnp.float32)]
      out += [loss_sums[:, b] for b in range(num_branches)]
      if segments:
        out.append(sum_steps(losses[..., 0] - losses[..., 1]))
      return jnp.stack(out)
    # Finite iff every loss was (an overflowing sum of finite losses takes the masked path,
    # which is also exact); one sum is one kernel where jnp.all over [P, S] took three.
    return states, jax.lax.cond(jnp.isfinite(jnp.sum(loss_sums)), unmasked, masked, None)

  def totals(acc, credits):
    """``(count, loss_sum, gsum)`` from the accumulated sums; ``credits`` are the segments'
    credits (theta-like, leaves ``[P, ...]``). Computed inside each form below: the credit (fresh
    noise) then reaches it as a materialized operand."""
    count = acc[0].astype(jnp.int32)  # float sums of 0/1 steps: exact
    loss_sum = acc[1:1 + num_branches].T  # [P, S]
    gsum = None
    if es:  # sum_t dl_t * credit_t = sum over segments of (the segment's dl sum) * its credit
      dl_seg = acc[1 + num_branches:]  # [E, P]
      gsum = jax.tree.map(
          lambda *cs: sum(dl_seg[e].reshape((-1,) + (1,) * (c.ndim - 1)) * c
                          for e, c in enumerate(cs)), *credits)
    return count, loss_sum, gsum

  # ---- The scan, in one of two forms. ----
  def scan_events_anywhere(states):
    """Events on any step. Everything about the window's noise is tabulated first: each pair's
    draws, their noise, and the *segments* between them (stretches of constant noise; segment 0
    carries on from the previous window, draw e opens segment e + 1), with each segment's
    perturbed theta and credit. Per-step selects (fused into the step) then start episodes and
    switch segments where they fall. The particles run flat, as in the other form; each
    segment's theta is one materialized ``[P * S, ...]`` row, chosen per particle by comparing
    the step with the particle's draw steps (a chain of ``E - 1`` selects)."""
    if schedule is None:
      th, th_axis = unperturbed()
      states, acc = run_scan(states, lambda j: th, th_axis, 0,
                             resets=True, valid_of=lambda j: j < end)
      count, loss_sum, gsum = totals(acc, [])
      return states, count, loss_sum, gsum, ws.eps, ws.xi

    steps = draws if draws is not None else _draw_steps(ws.t, start, end, W, schedule)  # [P, M]
    fresh_eps = _materialize(
        sample_noise(pair_step_key(pair_keys[:, None], steps, NOISE), theta, sigma))
    eps_table = jax.tree.map(lambda old, new: jnp.concatenate([old[:, None], new], axis=1),
                             ws.eps, fresh_eps)  # [P, E, ...]
    if schedule.accumulate:  # the episode's noise so far, restarted at the episode start
      rows = [ws.xi]
      for e in range(steps.shape[1]):
        new = jax.tree.map(lambda x: x[:, e], fresh_eps)
        rows.append(tree_lib.where_leading(steps[:, e] == start, new,
                                           jax.tree.map(jnp.add, rows[-1], new)))
      credit_table = jax.tree.map(lambda *xs: jnp.stack(xs, axis=1), *rows)
    else:
      credit_table = eps_table
    num_segments = steps.shape[1] + 1
    theta_rows = _materialize([flat(perturbed(jax.tree.map(lambda x: x[:, e], eps_table), 1))
                               for e in range(num_segments)])  # E rows of [P * S, ...]
    steps_p = _materialize(per_particle(steps))  # [P * S, M], each pair's for its branches

    def segment(j):  # [P] for one step j, [W, P] for j: [W, 1]: its noise segment per pair
      return jnp.sum(jnp.expand_dims(j, -1) >= steps, axis=-1, dtype=jnp.int32)

    def theta_at(j):  # [P * S, ...]: each particle's theta at step j
      out = theta_rows[0]
      for e in range(1, num_segments):
        out = tree_lib.where_leading(j >= steps_p[:, e - 1], theta_rows[e], out)
      return out

    states, acc = run_scan(states, theta_at, 0,
                           num_segments, resets=True, valid_of=lambda j: j < end, seg_of=segment)
    credits = [jax.tree.map(lambda c, e=e: c[:, e], credit_table) for e in range(num_segments)]
    count, loss_sum, gsum = totals(acc, credits)
    last = jnp.sum(steps < W, axis=1, dtype=jnp.int32)  # the segment in use after the window
    eps = _select(last, eps_table)
    xi = _select(last, credit_table) if schedule.accumulate else ws.xi
    return states, count, loss_sum, gsum, eps, xi

  def scan_events_at_start(states):
    """Every event is on the window's first step (no pair straddles an episode boundary inside
    it): applied once before the scan, whose steps then run with a loop-invariant theta per
    particle and no selects, as a plain rollout does (XLA hoists what depends on theta alone).
    Only the noise of step 0 is drawn (one vector per pair), no segment table is built."""
    states = tree_lib.where_leading(per_particle(start == 0), per_particle(fresh), states)
    eps, xi, credits = ws.eps, ws.xi, []
    if schedule is None:
      th, th_axis = unperturbed()
    else:
      if draws is not None:
        draw0 = jnp.any(draws == 0, axis=1)
      elif schedule.every_window:
        draw0 = jnp.ones_like(began)
      else:
        draw0 = start == 0
      new = _materialize(sample_noise(pair_step_key(pair_keys, 0, NOISE), theta, sigma))
      eps = tree_lib.where_leading(draw0, new, ws.eps)
      if schedule.accumulate:
        restarted = tree_lib.where_leading(start == 0, new, jax.tree.map(jnp.add, ws.xi, new))
        xi = tree_lib.where_leading(draw0, restarted, ws.xi)
      credits = [xi if schedule.accumulate else eps]
      th, th_axis = flat(perturbed(eps, 1)), 0
    states, acc = run_scan(states, lambda j: th, th_axis, 1)  # loop-invariant: hoisted
    count, loss_sum, gsum = totals(acc, credits)
    return states, count, loss_sum, gsum, eps, xi

  if active_steps is None:  # a window as the estimators run it: take the fast form when it applies
    states, count, loss_sum, gsum, eps, xi = jax.lax.cond(
        events_at_start_only(start, draws, W), scan_events_at_start,
        scan_events_anywhere, flat(ws.states))
    states = unflat(states)
  else:  # a burn-in: pairs stop at different steps
    states, count, loss_sum, gsum, eps, xi = scan_events_anywhere(flat(ws.states))
    states = unflat(states)
  nonfinite = end - count  # every step taken (j < end) is either finite or not

  # ---- Close the window: positions, episode lengths. ----
  resets = began.astype(jnp.int32)
  length = jnp.where(began, fresh_length, ws.length)
  t = jnp.where(began, end - start, ws.t + end)
  if system.horizon is not None:
    t = jnp.where(t >= length, 0, t)
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
  key = as_typed_key(key)
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
