"""The public gradient estimators (``from meta_train.estimators import NRES``).

They live in :mod:`meta_train.engine.estimators`, one file per estimator; this module is their
public name, as ``optax`` re-exports from ``optax._src``.
"""

from meta_train.engine.estimators import (ESTIMATORS, GPES, NRES, PES, TBPTT, Estimator, FullES,
                                          Metrics, OnlineES, OverTasks, OverTasksState,
                                          SystemEstimator, TruncatedES, make, options,
                                          register)

__all__ = ["ESTIMATORS", "Estimator", "FullES", "GPES", "Metrics", "NRES", "OnlineES",
           "OverTasks", "OverTasksState", "PES", "SystemEstimator", "TBPTT", "TruncatedES", "make",
           "options", "register"]
