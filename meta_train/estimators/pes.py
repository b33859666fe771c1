"""Persistent ES (Vicol, Metz & Sohl-Dickstein, ICML 2021, arXiv:2112.13835) and its
generalization GPES_K (Li et al. 2023, arXiv:2304.12180).

PES draws fresh noise for every window and credits each window's loss differences to the sum of
all the noise the pair has used in the episode so far:

    xi_k = eps_1 + ... + eps_k,   g = 1 / (2 sigma^2 W) * sum_{t in window k} (L+_t - L-_t) * xi_k

GPES_K draws fresh noise every ``K`` steps counted from the start of the episode instead of every
window. Both are unbiased (each for its own smoothed objective, see DESIGN §6: only NRES and
FullES share one); their variance grows with the number of noise blocks per episode.
"""

from __future__ import annotations

from meta_train.estimators.base import OnlineES
from meta_train.workers import NoiseSchedule
from lopt_meta.errors import check_positive_int


class PES(OnlineES):
  """Persistent ES: fresh noise every window, accumulated over the episode.

  Args: as :class:`meta_train.estimators.NRES`. A window that straddles an episode boundary
  switches to the new episode's fresh noise (and a restarted accumulator) at the boundary.
  """

  name = "pes"
  schedule = NoiseSchedule(every_window=True, accumulate=True)


class GPES(OnlineES):
  """Generalized PES: fresh noise every ``K`` steps of an episode, accumulated over the episode.

  Args:
    K: steps per noise block, counted from the start of each episode (any ``K >= 1``). With
      ``lockstep=True`` and ``W`` dividing ``T``, ``K = W`` is PES; ``K >= T`` is NRES.
    others: as :class:`meta_train.estimators.NRES`.
  """

  name = "gpes"

  def __init__(self, system, *, num_particles: int, sigma: float, unroll_length: int, K: int,
               lockstep: bool = False, devices=None):
    check_positive_int("K", K, "steps per noise block")
    self.K = K
    self.schedule = NoiseSchedule(block=K, accumulate=True)
    super().__init__(system, num_particles=num_particles, sigma=sigma,
                     unroll_length=unroll_length, lockstep=lockstep, devices=devices)

  def _config(self):
    return {**super()._config(), "K": self.K}
