"""Particle workers: their persistent state, and step-unlocking.

Every windowed estimator keeps a :class:`WorkerState` across outer steps: ``P`` pairs of ``S``
branches (``theta + eps``, ``theta - eps``, and for truncated ES the unperturbed centre), their
positions in their episodes, their noise and credit. A window advances them
(:mod:`meta_train.engine.window`); here they are made (:func:`init_workers`) and step-unlocked
(:func:`step_unlock`): each pair is burned in to a random position of its first episode, so that
the population covers the horizon from the first outer step (ES-Single paper, App. C.2).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from lopt_meta.prng import as_typed_key
from meta_train.engine import tree as tree_lib
from meta_train.engine.window import NoiseRule, WorkerState, burn_in
from tasks.base import UnrolledSystem

PyTree = Any

__all__ = ["WorkerState", "init_workers", "step_unlock", "unlock_positions"]


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
                signs: tuple[float, ...], sigma: float, noise_rule: NoiseRule | None,
                window_length: int, mesh: Mesh | None = None) -> WorkerState:
  """Burns each pair in to a random position of its episode (:func:`unlock_positions`) by
  really running it there (:func:`burn_in`; up to ``T - 1`` batched steps, once). For a system
  with no horizon it does nothing: every pair starts at step 0."""
  key = as_typed_key(key)
  if system.horizon is None or system.horizon == 1:
    return ws
  pos_key, run_key = jax.random.split(key)
  tau = unlock_positions(system, pos_key, ws.t.shape[0], window_length)
  return burn_in(system, theta, ws, run_key, tau, signs=signs, sigma=sigma,
                 noise_rule=noise_rule, window_length=window_length, mesh=mesh)
