"""Particle workers: persistent states, antithetic pairing, episode resets, step-unlocking.

Every estimator in :mod:`meta_train.estimators` drives its particles through :func:`run_window`,
one ``jax.lax.scan`` over the steps of a window, batched over ``P`` pairs (``jax.vmap``) and over
the ``S`` branches of each pair (``theta + eps``, ``theta - eps``, and for truncated ES the
unperturbed centre). Nothing runs in a Python loop over particles or steps.

Conventions (see DESIGN §2 and §6):

* Positions. ``t[i]`` counts the steps pair ``i`` has taken in its current episode; ``t == 0``
  means the next step starts a new episode. Before that step the pair's state is replaced by
  ``system.init(reset_key)`` and (for ES) its noise is resampled; PES/GPES accumulators restart.
  So the loss of an episode's last step is still paired with the old noise, and a window that
  straddles an episode boundary switches noise exactly at the boundary.
* Randomness. Window key -> ``jax.random.split(key, P)`` pair keys -> ``fold_in(pair_key, j)`` for
  the window's step ``j`` -> ``split(., 3)`` = (reset key, noise key, step key). All branches of a
  pair use the same three keys: the same initial state, the same data, common random numbers.
* Credit. Each pair carries ``credit``: the noise now in use (NRES, TES) or the sum of the
  episode's noise blocks so far (PES, GPES_K). ``dl = L+_t - L-_t`` is summed per pair while the
  credit is constant and folded into the pair's gradient sum (``gsum += dl_sum * credit``) when the
  credit changes and at the end of the window: the same sum as per step, at a fraction of the work.
* Masking. A (pair, step) whose losses are not all finite contributes nothing and is counted.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

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
  """
  states: PyTree
  t: jax.Array
  eps: PyTree
  xi: PyTree
  episodes: jax.Array
  burn_in: jax.Array


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


class _Carry(NamedTuple):
  states: PyTree
  t: jax.Array
  eps: PyTree
  xi: PyTree
  episodes: jax.Array
  gsum: PyTree
  dl_acc: jax.Array
  count: jax.Array
  loss_sum: jax.Array
  nonfinite: jax.Array
  resets: jax.Array


def step_keys(pair_keys: jax.Array, j: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The (reset, noise, step) keys ``[P]`` of each pair at the window's step ``j``."""
  keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, j), 3))(pair_keys)
  return keys[:, 0], keys[:, 1], keys[:, 2]


def sample_noise(keys: jax.Array, theta: PyTree, sigma: float) -> PyTree:
  """``sigma * N(0, I)`` noise shaped like ``theta``, one draw per key: leaves ``[P, ...]``."""
  return jax.vmap(lambda k: optax.tree.scale(sigma, optax.tree.random_like(k, theta)))(keys)


def init_workers(system: UnrolledSystem, theta: PyTree, key: jax.Array, num_pairs: int,
                 num_branches: int, *, with_noise: bool, accumulate: bool) -> WorkerState:
  """Fresh workers at ``t = 0`` (their first step will start an episode). States are real initial
  states (so shapes and dtypes are those of the running system); noise is zero until drawn."""
  states = jax.vmap(system.init)(jax.random.split(key, num_pairs))
  states = tree_lib.expand_axis(states, 1, num_branches)
  zeros = jax.tree.map(lambda x: jnp.zeros((num_pairs,) + jnp.shape(x), jnp.result_type(x)), theta)
  int0 = jnp.zeros((num_pairs,), jnp.int32)
  return WorkerState(states=states, t=int0, eps=zeros if with_noise else None,
                     xi=zeros if (with_noise and accumulate) else None, episodes=int0, burn_in=int0)


def run_window(system: UnrolledSystem, theta: PyTree, ws: WorkerState, key: jax.Array,
               num_steps: int, *, signs: tuple[float, ...], sigma: float = 1.0,
               schedule: NoiseSchedule | None = None, theta_per_pair: bool = False,
               window_length: int | None = None, active_steps: jax.Array | None = None,
               estimate_grad: bool = True) -> tuple[WorkerState, WindowOut]:
  """Advances every pair ``num_steps`` steps: one ``lax.scan``, vmapped over pairs and branches.

  Args:
    system: the unrolled system.
    theta: the meta-parameters; with ``theta_per_pair`` its leaves carry a leading ``[P]`` axis
      (truncated backprop differentiates each pair's copy).
    ws: the workers; ``ws.states`` leaves are ``[P, S, ...]`` with ``S = len(signs)``.
    key: this window's key.
    num_steps: steps to run (static).
    signs: branch ``s`` of pair ``i`` runs ``theta + signs[s] * eps[i]``; ``(1., -1.)`` for an
      antithetic pair, ``(1., -1., 0.)`` for truncated ES, ``(0.,)`` with no noise.
    sigma: the noise scale.
    schedule: when to draw noise (``None``: no noise; ``ws.eps`` is then unused).
    theta_per_pair: see ``theta``.
    window_length: steps per window for ``schedule.every_window`` (default ``num_steps``); the
      burn-in passes the estimator's ``W`` so that it draws noise as the windows will.
    active_steps: ``[P] int32`` or ``None``: pair ``i`` takes only its first ``active_steps[i]``
      steps and stays put after (the burn-in that step-unlocks workers).
    estimate_grad: accumulate the ES credit (off for the burn-in).

  Returns:
    ``(new_ws, out)``; see :class:`WindowOut`. ``out.gsum`` is ``None`` unless the first two
    branches are an antithetic pair (``signs[:2] == (1., -1.)``) with noise.
  """
  num_pairs = ws.t.shape[0]
  horizon = system.horizon
  window_length = num_steps if window_length is None else window_length
  if theta_per_pair and schedule is not None:
    raise ValueError("theta_per_pair is for noise-free rollouts (truncated backprop)")
  es = (estimate_grad and schedule is not None and len(signs) >= 2
        and tuple(signs[:2]) == (1.0, -1.0))
  signs_arr = jnp.asarray(signs, jnp.float32)
  pair_keys = jax.random.split(key, num_pairs)
  credit_of = (lambda eps, xi: xi) if (schedule is not None and schedule.accumulate) else (
      lambda eps, xi: eps)

  def flush(gsum, dl_acc, credit, mask):
    """Folds ``dl_acc`` into ``gsum`` for the pairs in ``mask`` and clears it there."""
    add = tree_lib.scale_rows(jnp.where(mask, dl_acc, 0.0), credit)
    return jax.tree.map(jnp.add, gsum, add), jnp.where(mask, 0.0, dl_acc)

  def body(c: _Carry, j):
    k_reset, k_noise, k_step = step_keys(pair_keys, j)
    active = jnp.ones((num_pairs,), bool) if active_steps is None else j < active_steps
    start = (c.t == 0) & active

    # 1. Episode reset: only when some pair starts an episode (a real branch, not a select).
    def reset(states):
      fresh = tree_lib.expand_axis(jax.vmap(system.init)(k_reset), 1, len(signs))
      return tree_lib.where_leading(start, fresh, states)
    states = jax.lax.cond(jnp.any(start), reset, lambda s: s, c.states)

    # 2. Noise: fresh at every episode start, and as the schedule says.
    eps, xi, gsum, dl_acc = c.eps, c.xi, c.gsum, c.dl_acc
    if schedule is not None:
      need = start
      if schedule.every_window:
        need = need | ((j % window_length == 0) & active)
      if schedule.block is not None:
        need = need | ((c.t % schedule.block == 0) & active)

      def resample(args):
        eps, xi, gsum, dl_acc = args
        if es:
          gsum, dl_acc = flush(gsum, dl_acc, credit_of(eps, xi), need)
        new = sample_noise(k_noise, theta, sigma)
        eps = tree_lib.where_leading(need, new, eps)
        if xi is not None:
          restarted = tree_lib.where_leading(start, jax.tree.map(jnp.zeros_like, xi), xi)
          xi = tree_lib.where_leading(need, jax.tree.map(jnp.add, restarted, new), xi)
        return eps, xi, gsum, dl_acc
      eps, xi, gsum, dl_acc = jax.lax.cond(jnp.any(need), resample, lambda a: a,
                                           (eps, xi, gsum, dl_acc))

    # 3. One step of every branch of every pair; branches share the pair's step key.
    def pair_step(theta_i, eps_i, states_i, key_i):
      def branch(sign, s):
        th = theta_i if eps_i is None else jax.tree.map(lambda a, e: a + sign * e, theta_i, eps_i)
        return system.step(th, s, key_i)
      return jax.vmap(branch)(signs_arr, states_i)
    theta_axis = 0 if theta_per_pair else None
    eps_in = eps if schedule is not None else None
    new_states, losses = jax.vmap(pair_step, in_axes=(theta_axis, 0, 0, 0))(
        theta, eps_in, states, k_step)
    losses = losses.astype(jnp.float32)  # [P, S]

    # 4. Credit and bookkeeping, masked where a loss is not finite.
    finite = jnp.all(jnp.isfinite(losses), axis=1) & active
    nonfinite = c.nonfinite + (active & ~finite).astype(jnp.int32)
    safe = jnp.where(finite[:, None], losses, 0.0)
    if es:
      dl_acc = dl_acc + (safe[:, 0] - safe[:, 1])

    t = c.t + 1
    if horizon is not None:
      t = jnp.where(t >= horizon, 0, t)
    if active_steps is not None:  # inactive pairs stay exactly where they were
      new_states = tree_lib.where_leading(active, new_states, c.states)
      t = jnp.where(active, t, c.t)
    return _Carry(
        states=new_states, t=t, eps=eps, xi=xi, episodes=c.episodes + start.astype(jnp.int32),
        gsum=gsum, dl_acc=dl_acc, count=c.count + finite.astype(jnp.int32),
        loss_sum=c.loss_sum + safe, nonfinite=nonfinite,
        resets=c.resets + start.astype(jnp.int32)), None

  zeros_p = jnp.zeros((num_pairs,), jnp.int32)
  gsum0 = jax.tree.map(jnp.zeros_like, ws.eps) if es else None
  carry0 = _Carry(states=ws.states, t=ws.t, eps=ws.eps, xi=ws.xi, episodes=ws.episodes,
                  gsum=gsum0, dl_acc=jnp.zeros((num_pairs,), jnp.float32), count=zeros_p,
                  loss_sum=jnp.zeros((num_pairs, len(signs)), jnp.float32), nonfinite=zeros_p,
                  resets=zeros_p)
  c, _ = jax.lax.scan(body, carry0, jnp.arange(num_steps))
  gsum = None
  if es:
    gsum, _ = flush(c.gsum, c.dl_acc, credit_of(c.eps, c.xi), jnp.ones((num_pairs,), bool))
  new_ws = ws.replace(states=c.states, t=c.t, eps=c.eps, xi=c.xi, episodes=c.episodes)
  return new_ws, WindowOut(gsum=gsum, count=c.count, loss_sum=c.loss_sum,
                           nonfinite=c.nonfinite, resets=c.resets)


def step_unlock(system: UnrolledSystem, theta: PyTree, ws: WorkerState, key: jax.Array, *,
                signs: tuple[float, ...], sigma: float, schedule: NoiseSchedule | None,
                window_length: int) -> WorkerState:
  """Burns each pair in to a uniformly random position ``tau_i in [0, T)`` of its episode.

  The burn-in really runs the ``tau_i`` steps under ``theta`` (+/- the pair's noise, drawn as the
  estimator draws it), so the states are those the system would have reached: no fake states.
  It costs ``T - 1`` batched steps once. For a system with no horizon it does nothing.
  """
  if system.horizon is None or system.horizon == 1:
    return ws
  num_pairs = ws.t.shape[0]
  pos_key, run_key = jax.random.split(key)
  tau = jax.random.randint(pos_key, (num_pairs,), 0, system.horizon, dtype=jnp.int32)
  ws, _ = run_window(system, theta, ws, run_key, system.horizon - 1, signs=signs, sigma=sigma,
                     schedule=schedule, window_length=window_length, active_steps=tau,
                     estimate_grad=False)
  return ws.replace(burn_in=tau)
