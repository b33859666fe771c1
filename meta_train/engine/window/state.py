"""The persistent state of an estimator's particle workers, which a window advances.

Defined below the window's code (which reads and returns it); :mod:`meta_train.engine.workers`
makes it and step-unlocks it.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import struct

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
    xi: theta-like ``[P, ...]``, the credit when the noise rule accumulates one (PES, GPES_K: the
      sum of the current episode's noise blocks); ``None`` otherwise.
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
