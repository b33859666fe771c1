"""The layout of a window's particles: ``P`` pairs x ``S`` branches, run as one flat batch."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any


class Particles(NamedTuple):
  """``P`` pairs of ``S`` branches: branch ``s`` of pair ``i`` runs ``theta + signs[s] * eps_i``.

  Leaves are ``[P, S, ...]`` in the worker state and ``[P * S, ...]`` (pair-major, "flat") inside
  the scan (see :mod:`meta_train.engine.xla_cpu`); the reshapes are free.

  Attributes:
    num_pairs: ``P``.
    signs: ``S`` floats: ``(1., -1.)`` for an antithetic pair, ``(1., -1., 0.)`` for truncated
      ES (the pair's shared state advances as the third branch), ``(0.,)`` without noise.
  """
  num_pairs: int
  signs: tuple[float, ...]

  @property
  def num_branches(self) -> int:
    return len(self.signs)

  def flat(self, tree: PyTree) -> PyTree:
    """``[P, S, ...] -> [P * S, ...]``."""
    return jax.tree.map(lambda x: x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:]), tree)

  def unflat(self, tree: PyTree) -> PyTree:
    """``[P * S, ...] -> [P, S, ...]``."""
    return jax.tree.map(lambda x: x.reshape((self.num_pairs, self.num_branches) + x.shape[1:]),
                        tree)

  def per_particle(self, tree: PyTree) -> PyTree:
    """``[P, ...] -> [P * S, ...]``: each pair's row repeated for its branches."""
    S = self.num_branches
    return jax.tree.map(
        lambda a: jnp.broadcast_to(a[:, None], (a.shape[0], S) + a.shape[1:])
        .reshape((a.shape[0] * S,) + a.shape[1:]), tree)

  def perturbed(self, theta: PyTree, eps: PyTree) -> PyTree:
    """Each particle's theta, flat: ``theta + signs[s] * eps_i``, leaves ``[P * S, ...]``
    (``eps``: leaves ``[P, ...]``)."""
    signs = jnp.asarray(self.signs, jnp.float32)

    def one(th, e):
      e = e[:, None]
      return th + signs.reshape((1, -1) + (1,) * (e.ndim - 2)) * e
    return self.flat(jax.tree.map(one, theta, eps))
