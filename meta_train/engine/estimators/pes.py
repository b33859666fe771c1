"""Persistent ES (Vicol, Metz & Sohl-Dickstein, ICML 2021, arXiv:2112.13835) and its
generalization GPES_K (Li et al. 2023, arXiv:2304.12180).

PES draws fresh noise for every window and credits each window's loss differences to the sum of
all the noise the pair has used in the episode so far:

    xi_k = eps_1 + ... + eps_k,   g = 1 / (2 sigma^2 W) * sum_{t in window k} (L+_t - L-_t) * xi_k

GPES_K draws fresh noise every ``K`` steps counted from the start of the episode instead of every
window. Both are unbiased, each for its own smoothed objective (their noise changes within an
episode, so they smooth each step's loss over other perturbations than FullES does; NRES alone
shares FullES's ``E_eps (1/T) sum_t L_t(theta + eps)``); their variance grows with the number
of noise blocks per episode.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from lopt_meta.errors import check_positive_int
from meta_train.engine import tree as tree_lib
from meta_train.engine.estimators.base import EveryWindowRule, OnlineES
from meta_train.engine.window import NoiseRule

PyTree = Any


def accumulated_credit(credit: PyTree, noise: PyTree, new_episode: jax.Array) -> PyTree:
  """PES's credit after a pair draws ``noise``: ``xi_k = eps_1 + ... + eps_k``, the sum of the
  episode's noise blocks so far (``xi_1 = eps_1`` when the draw starts an episode).

  Args:
    credit: theta-like, leaves ``[P, ...]``: ``xi_{k-1}``.
    noise: theta-like, leaves ``[P, ...]``: the fresh ``eps_k``.
    new_episode: ``[P] bool``, the draw is the first of an episode.
  """
  return tree_lib.where_leading(new_episode, noise, jax.tree.map(jax.numpy.add, credit, noise))


@dataclasses.dataclass(frozen=True)
class PESRule(EveryWindowRule):
  """PES's rule: a pair draws fresh noise at the first step of every window (and at an episode
  start inside one), and each step's ``L+ - L-`` is credited to the sum of the episode's noise
  blocks so far (:func:`accumulated_credit`)."""

  accumulates = True

  def credit(self, credit: PyTree, noise: PyTree, new_episode: jax.Array) -> PyTree:
    return accumulated_credit(credit, noise, new_episode)


@dataclasses.dataclass(frozen=True)
class GPESRule(NoiseRule):
  """GPES_K's rule: a pair draws fresh noise whenever its position in its episode is a multiple
  of ``K`` (the episode's first step included), and each step's ``L+ - L-`` is credited to the
  sum of the episode's noise blocks so far (:func:`accumulated_credit`).

  Attributes:
    K: steps per noise block, ``>= 1``.
  """

  K: int
  accumulates = True

  def max_draws(self, num_steps: int) -> int:
    return -(-num_steps // self.K) + 1  # the blocks of the current episode and of the next one

  def next_draw(self, prev: jax.Array, *, t: jax.Array, start: jax.Array, end: jax.Array,
                num_steps: int) -> jax.Array:
    K, W = self.K, num_steps
    old_end = jnp.minimum(start, end)  # steps [0, old_end) are in the pair's current episode
    j = prev + 1  # the first step after prev at a multiple of K: in the current episode (t + j)
    in_old = j + (K - (t + j) % K) % K
    nxt = jnp.where(in_old < old_end, in_old, W)
    j = jnp.maximum(prev + 1, start)  # ... and in the new one (j - start)
    in_new = j + (K - (j - start) % K) % K
    return jnp.minimum(nxt, jnp.where(start < W, in_new, W))

  def credit(self, credit: PyTree, noise: PyTree, new_episode: jax.Array) -> PyTree:
    return accumulated_credit(credit, noise, new_episode)


class PES(OnlineES):
  """Persistent ES: fresh noise every window, accumulated over the episode.

  Args: as :class:`meta_train.engine.estimators.NRES`. A window that straddles an episode boundary
  switches to the new episode's fresh noise (and a restarted accumulator) at the boundary.
  """

  name = "pes"
  noise_rule = PESRule()


class GPES(OnlineES):
  """Generalized PES: fresh noise every ``K`` steps of an episode, accumulated over the episode.

  Args:
    K: steps per noise block, counted from the start of each episode (any ``K >= 1``). With
      ``lockstep=True`` and ``W`` dividing ``T``, ``K = W`` is PES; ``K >= T`` is NRES.
    others: as :class:`meta_train.engine.estimators.NRES`.
  """

  name = "gpes"

  def __init__(self, system, *, num_particles: int, sigma: float, unroll_length: int, K: int,
               lockstep: bool = False, devices=None):
    check_positive_int("K", K, "steps per noise block")
    self.K = K
    self.noise_rule = GPESRule(K)
    super().__init__(system, num_particles=num_particles, sigma=sigma,
                     unroll_length=unroll_length, lockstep=lockstep, devices=devices)

  def _config(self):
    return {**super()._config(), "K": self.K}
