"""Noise-Reuse ES (NRES; Li, Harrison, Sohl-Dickstein, Smith & Metz 2023, arXiv:2304.12180), also
published as ES-Single (Vicol, Sohl-Dickstein & Metz, ICML 2023).

Each pair draws its noise ``eps`` once per episode and reuses it in every window of the episode:

    g = 1 / (2 sigma^2 W) * sum_{t in window} (L+_t - L-_t) * eps,   averaged over pairs

Unbiased for the FullES smoothed objective ``E_eps (1/T) sum_t L_t(theta + eps)``, with a variance
that does not grow with ``T / W``; the lowest-variance GPES_K estimator (K = T).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from meta_train.engine.estimators.base import OnlineES
from meta_train.engine.window import NoiseRule


@dataclasses.dataclass(frozen=True)
class NRESRule(NoiseRule):
  """The noise-reuse rule: a pair draws noise only when it starts an episode (no draw at a
  window's start, no blocks), and each step's ``L+ - L-`` is credited to the noise in use, so
  that per window ``gsum_i = (sum_{t in window} L+_t - L-_t) * eps_i``."""

  accumulates = False  # each step is credited to the noise in use

  def max_draws(self, num_steps: int) -> int:
    del num_steps
    return 0

  def next_draw(self, prev: jax.Array, *, t: jax.Array, start: jax.Array, end: jax.Array,
                num_steps: int) -> jax.Array:
    del prev, start, end
    return jnp.full_like(t, num_steps)


class NRES(OnlineES):
  """Noise-Reuse ES: one noise draw per pair per episode, reused across all its windows.

  Args:
    system: the unrolled system.
    num_particles: ``N``, even; ``N/2`` antithetic pairs.
    sigma: the noise scale (``eps ~ N(0, sigma^2 I)``).
    unroll_length: ``W``, steps per window (``1 <= W <= T``; ``W`` need not divide ``T``).
    lockstep: start every pair at step 0 instead of step-unlocking them by a burn-in.

  Example:

  >>> import jax, tasks
  >>> from meta_train.engine.estimators import NRES
  >>> system = tasks.get("lorenz", horizon=200)
  >>> est = NRES(system, num_particles=8, sigma=0.04, unroll_length=20)
  >>> ws = est.init(jax.random.key(0), system.theta0)
  >>> grad, ws, metrics = est.estimate(jax.random.key(1), system.theta0, ws)
  >>> grad.shape, ws.eps.shape
  ((2,), (4, 2))
  """

  name = "nres"
  # One draw per episode, credited to the noise in use; the estimate is
  # meta_train.engine.maths.antithetic_grad of the pairs' gsum.
  noise_rule = NRESRule()
