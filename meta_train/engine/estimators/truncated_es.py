"""Truncated ES (TES): each window restarts both particles of a pair from one shared state.

Per window, each pair draws fresh ``eps``, unrolls ``theta + eps`` and ``theta - eps`` ``W`` steps
from its shared state and estimates from those ``W`` losses only; the shared state is then
advanced the same ``W`` steps under the unperturbed ``theta`` (a third branch run alongside). The
estimator ignores every effect of theta older than the window: it is biased (truncation bias),
e.g. it pushes theta the wrong way on influence balancing. The first of the two variants in the
ES-Single paper, Appendix C.1.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from meta_train.engine import tree as tree_lib
from meta_train.engine import window
from meta_train.engine.estimators.base import (EveryWindowRule, OnlineES, es_estimate,
                                               start_workers)

_SIGNS = (1.0, -1.0, 0.0)  # theta + eps, theta - eps, theta (the shared state's own branch)
_CENTRE = _SIGNS.index(0.0)  # the shared state's branch: its column of the window's loss sums


@dataclasses.dataclass(frozen=True)
class TruncatedESRule(EveryWindowRule):
  """Truncated ES's rule: a pair draws fresh noise at the first step of every window (and at an
  episode start inside one), and each step's ``L+ - L-`` is credited to the noise in use: no
  accumulation, as the window's estimate ignores every earlier window."""

  accumulates = False  # each step is credited to the noise in use


class TruncatedES(OnlineES):
  """Truncated ES with one shared state per pair (fresh noise every window, no accumulation).

  Args: as :class:`meta_train.engine.estimators.NRES`. ``metrics`` adds ``meta_loss_center``, the
  window's mean loss under the unperturbed theta.
  """

  name = "tes"
  noise_rule = TruncatedESRule()

  @property
  def steps_per_estimate(self) -> int:
    return (self.num_particles + self.num_pairs) * self.unroll_length  # + the shared centre

  def _init(self, key, theta):
    return start_workers(self, key, theta, rows=self.num_pairs, signs=(0.0,), sigma=self.sigma,
                         noise_rule=None, with_noise=True, accumulate=False)

  def _estimate(self, key, theta, ws):
    branches = ws.replace(states=tree_lib.expand_axis(
        jax.tree.map(lambda x: x[:, 0], ws.states), 1, len(_SIGNS)))
    branches, out = window.run_window(self.system, theta, branches, key, self.unroll_length,
                                       signs=_SIGNS, sigma=self.sigma,
                                       noise_rule=self.noise_rule, mesh=self.mesh)
    ws = branches.replace(states=jax.tree.map(lambda x: x[:, _CENTRE:_CENTRE + 1],
                                              branches.states))
    grad, metrics = es_estimate(out, self.sigma, self.steps_per_estimate)
    metrics["meta_loss_center"] = (jnp.sum(out.loss[:, _CENTRE])
                                   / jnp.maximum(jnp.sum(out.count), 1).astype(jnp.float32))
    return grad, ws, metrics
