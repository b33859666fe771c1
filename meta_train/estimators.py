"""The public gradient estimators (``from meta_train.estimators import NRES``).

They live in :mod:`meta_train.engine.estimators`, one file per estimator beside its noise rule
(when a pair draws noise, and what its loss differences are credited to: a
:class:`NoiseRule`, the interface the window engine reads); this module is their public name, as
``optax`` re-exports from ``optax._src``.
"""

from meta_train.engine.estimators import (ESTIMATORS, GPES, NRES, PES, TBPTT, Estimator, FullES,
                                          GPESRule, Metrics, NRESRule, OnlineES, OverTasks,
                                          OverTasksState, PESRule, SystemEstimator, TruncatedES,
                                          TruncatedESRule, make, options, register)
from meta_train.engine.window import NoiseRule

__all__ = ["ESTIMATORS", "Estimator", "FullES", "GPES", "GPESRule", "Metrics", "NRES", "NRESRule",
           "NoiseRule", "OnlineES", "OverTasks", "OverTasksState", "PES", "PESRule",
           "SystemEstimator", "TBPTT", "TruncatedES", "TruncatedESRule", "make", "options",
           "register"]
