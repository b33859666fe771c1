"""The window engine's entry points: one window of ``W`` steps for every pair of the workers.

* :func:`run_window`: the estimators' window, ``P`` pairs x ``S`` branches (``theta + eps``,
  ``theta - eps``, then any others the estimator asks for by their signs), with noise drawn and
  credited by the estimator's noise rule (a :class:`~meta_train.engine.window.noise.NoiseRule`,
  defined beside the estimator);
* :func:`tbptt_window`: a window without noise in which each trajectory runs its own copy of
  theta (truncated backprop differentiates it);
* :func:`burn_in`: step-unlocking's start-up, pair ``i`` run to its position ``tau_i``.

Each runs on one device's pairs (:func:`_over_pairs`: on one device or split over a mesh with
``shard_map``), in the steps of :mod:`meta_train.engine.window`: plan, segments, one of the two
forms (:mod:`.forms`), sums; then the window closes (:func:`_close_window`): the workers'
positions, episode lengths and noise advance and the sums are completed. Nothing runs in a Python
loop over particles or steps.

Conventions:

* Positions. ``t[i]`` counts the steps pair ``i`` has taken in its current episode; ``t == 0``
  means the next step starts a new episode. Episodes last ``T`` steps, or, for systems whose
  episodes vary in length, what ``system.episode_length`` says of the episode's fresh state.
  Before the first step of an episode the pair's state is replaced by a fresh ``system.init``,
  its noise is redrawn and its credit restarts. So the loss of an episode's last step is still
  paired with the old noise, and a window that straddles an episode boundary switches noise
  exactly at the boundary.
* Randomness. Window key -> ``split(key, P)`` pair keys -> at window step ``j``
  :func:`meta_train.engine.keys.pair_step_key` gives the reset, noise and step keys. Every
  function here takes a typed key or a raw ``uint32[2]`` one and hands the system typed keys.
* Noise and credit. A pair draws fresh noise at the start of each episode and wherever its noise
  rule draws (:meth:`~meta_train.engine.window.noise.NoiseRule.next_draw`). Each step's
  ``L+ - L-`` is credited to the noise in use, or, under a rule that accumulates, to the credit
  the pair keeps (``WorkerState.xi``), restarted at each episode start and updated at each draw
  by the rule's :meth:`~meta_train.engine.window.noise.NoiseRule.credit`. The window knows no
  particular rule.
* Masking. A (pair, step) whose losses are not all finite contributes nothing and is counted.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from lopt_meta.prng import as_typed_key
from meta_train.engine import keys as keys_lib
from meta_train.engine import sharding
from meta_train.engine import xla_cpu
from meta_train.engine.keys import NOISE, pair_step_key
from meta_train.engine.window import forms
from meta_train.engine.window import segments as segments_lib
from meta_train.engine.window.noise import NoiseRule
from meta_train.engine.window.state import WorkerState
from meta_train.engine.window.sums import WindowOut
from tasks.base import UnrolledSystem

PyTree = Any

ANTITHETIC = (1.0, -1.0)


def run_window(system: UnrolledSystem, theta: PyTree, ws: WorkerState, key: jax.Array,
               num_steps: int, *, signs: tuple[float, ...], sigma: float = 1.0,
               noise_rule: NoiseRule | None = None, mesh: Mesh | None = None,
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
    noise_rule: when noise is drawn (besides at episode starts) and what it is credited to;
      ``None``: no noise (``ws.eps`` unused).
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
  if noise_rule is not None and tuple(signs[:2]) != ANTITHETIC:
    raise ValueError(f"a window with noise needs the antithetic branches (1., -1.) first; "
                     f"got signs={signs}")
  window = functools.partial(_estimator_window, system, num_steps=num_steps, signs=signs,
                             sigma=sigma, noise_rule=noise_rule, general_form=general_form)
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
            noise_rule: NoiseRule | None, window_length: int,
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
                             noise_rule=noise_rule)

  def one(ws, b):
    steps_left = jnp.clip(positions - b * W, 0, W).astype(jnp.int32)
    return _over_pairs(window, mesh, theta, ws, jax.random.fold_in(key, b), steps_left), None
  ws, _ = jax.lax.scan(one, ws, jnp.arange(num_windows))
  return ws.replace(burn_in=positions.astype(jnp.int32))


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


def _estimator_window(system, theta, ws, pair_keys, *, num_steps, signs, sigma, noise_rule,
                      general_form):
  """:func:`run_window` on one device's pairs: the form whose events fall on step 0 when they
  all do, the general one otherwise."""
  s = forms.setup(system, ws, pair_keys, num_steps=num_steps, signs=signs, noise_rule=noise_rule)
  noise = dict(particles=s.particles, sigma=sigma, noise_rule=noise_rule)

  def events_at_start(states):
    segments = (segments_lib.unperturbed(theta, ws.eps, ws.xi) if noise_rule is None else
                segments_lib.at_first_step(s.plan, theta, ws.eps, ws.xi,
                                           pair_step_key(pair_keys, 0, NOISE), **noise))
    return forms.events_at_start(system, s, segments, states, estimate=noise_rule is not None)

  def events_anywhere(states):
    segments = (segments_lib.unperturbed(theta, ws.eps, ws.xi) if noise_rule is None else
                segments_lib.at_every_draw(s.plan, theta, ws.eps, ws.xi, pair_step_key(
                    pair_keys[:, None], s.plan.draws, NOISE), **noise))
    return forms.events_anywhere(system, s, segments, states, estimate=noise_rule is not None)

  if general_form:
    carry, out = events_anywhere(s.particles.flat(ws.states))
  else:
    carry, out = jax.lax.cond(s.plan.events_at_start(), events_at_start, events_anywhere,
                              s.particles.flat(ws.states))
  return _close_window(system, ws, s, carry, out)


def _tbptt_window(system, theta_per_pair, ws, pair_keys, *, num_steps):
  """:func:`tbptt_window` on one device's pairs."""
  s = forms.setup(system, ws, pair_keys, num_steps=num_steps, signs=(0.0,), noise_rule=None)
  segments = segments_lib.unperturbed(theta_per_pair, ws.eps, ws.xi, particles=s.particles)
  carry, out = jax.lax.cond(
      s.plan.events_at_start(),
      lambda states: forms.events_at_start(system, s, segments, states, estimate=False),
      lambda states: forms.events_anywhere(system, s, segments, states, estimate=False),
      s.particles.flat(ws.states))
  return _close_window(system, ws, s, carry, out)


def _burn_in_window(system, theta, ws, pair_keys, steps_left, *, num_steps, signs, sigma,
                    noise_rule):
  """One window of :func:`burn_in` on one device's pairs: pair ``i`` takes ``steps_left[i]``
  steps, drawing noise as the estimator's windows do, and estimates nothing."""
  s = forms.setup(system, ws, pair_keys, num_steps=num_steps, signs=signs,
                  noise_rule=noise_rule, end=steps_left)
  segments = (segments_lib.unperturbed(theta, ws.eps, ws.xi) if noise_rule is None else
              segments_lib.at_every_draw(s.plan, theta, ws.eps, ws.xi, pair_step_key(
                  pair_keys[:, None], s.plan.draws, NOISE), particles=s.particles, sigma=sigma,
                  noise_rule=noise_rule))
  carry, out = forms.events_anywhere(system, s, segments, s.particles.flat(ws.states),
                                     estimate=False, stop=True)
  return _close_window(system, ws, s, carry, out)[0]


def _close_window(system, ws: WorkerState, s: forms.Setup, carry: forms.Carry,
                  out: WindowOut) -> tuple[WorkerState, WindowOut]:
  """The workers after the window (positions, episode lengths, noise) and its sums."""
  plan = s.plan
  resets = plan.began.astype(jnp.int32)
  length = jnp.where(plan.began, s.fresh_length, ws.length)
  t = jnp.where(plan.began, plan.end - plan.start, ws.t + plan.end)
  if system.horizon is not None:
    t = jnp.where(t >= length, 0, t)
  new_ws = ws.replace(states=s.particles.unflat(carry.states), t=t, eps=carry.eps, xi=carry.xi,
                      episodes=ws.episodes + resets, length=length)
  return new_ws, out._replace(nonfinite=plan.end - out.count, resets=resets)
