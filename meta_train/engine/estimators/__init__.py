"""Gradient estimators for unrolled systems, all behind one interface.

>>> est = NRES(system, num_particles=N, sigma=s, unroll_length=W)   # doctest: +SKIP
>>> ws = est.init(key, theta)                                        # doctest: +SKIP
>>> grad, ws, metrics = est.estimate(key, theta, ws)                 # doctest: +SKIP

``N`` counts particles (``N/2`` antithetic pairs). Every ES estimate is the mean over pairs and
over the window's steps of ``(L+_t - L-_t) * credit / (2 sigma^2)``: it targets the gradient of the
mean per-step loss (see :mod:`meta_train.engine.maths` for the convention and conversions).
"""

from __future__ import annotations

import inspect

from lopt_meta.errors import ConfigError, check_options, unknown_name
from meta_train.engine.estimators.base import Estimator, Metrics, OnlineES, SystemEstimator
from meta_train.engine.estimators.full_es import FullES
from meta_train.engine.estimators.nres import NRES, NRESRule
from meta_train.engine.estimators.over_tasks import OverTasks, OverTasksState
from meta_train.engine.estimators.pes import GPES, PES, GPESRule, PESRule
from meta_train.engine.estimators.tbptt import TBPTT
from meta_train.engine.estimators.truncated_es import TruncatedES, TruncatedESRule

ESTIMATORS: dict[str, type[Estimator]] = {
    "nres": NRES,
    "pes": PES,
    "gpes": GPES,
    "full_es": FullES,
    "tes": TruncatedES,
    "tbptt": TBPTT,
}


def register(name: str, cls: type[Estimator], *, overwrite: bool = False) -> type[Estimator]:
  """Adds estimator class ``cls`` under ``name``: ``cls(system, **options)`` builds it, and its
  keyword arguments are its options (``--estimator-option NAME VALUE`` in the command, beside
  the shared ``num_particles``, ``sigma``, ``unroll_length`` and ``lockstep`` it takes).

  Raises:
    ConfigError(estimator): ``name`` is taken (unless ``overwrite``).
  """
  if name in ESTIMATORS and not overwrite:
    raise ConfigError("estimator", f"{name!r} is already registered; pass overwrite=True to "
                      "replace it")
  ESTIMATORS[name] = cls
  return cls


def options(name: str) -> list[str]:
  """The options estimator ``name`` takes: the keyword arguments of its class (besides the system,
  and ``devices``, which places it rather than configures it)."""
  if name not in ESTIMATORS:
    raise unknown_name("estimator", name, ESTIMATORS)
  params = inspect.signature(ESTIMATORS[name].__init__).parameters
  return [p for p in params if p not in ("self", "system", "devices")]


def make(name: str, system, **kwargs) -> Estimator:
  """Builds estimator ``name`` for ``system``; an option it does not take, or one it needs and is
  not given, is an error naming the option."""
  check_options("estimator", name, kwargs, [*options(name), "devices"])
  params = inspect.signature(ESTIMATORS[name].__init__).parameters
  for option, p in params.items():
    if (option not in ("self", "system") and p.default is inspect.Parameter.empty
        and option not in kwargs and p.kind is not inspect.Parameter.VAR_KEYWORD):
      raise ConfigError(option, f"estimator {name!r} needs the option {option!r}")
  return ESTIMATORS[name](system, **kwargs)


__all__ = ["ESTIMATORS", "Estimator", "FullES", "GPES", "GPESRule", "Metrics", "NRES", "NRESRule",
           "OnlineES", "OverTasks", "OverTasksState", "PES", "PESRule", "SystemEstimator", "TBPTT",
           "TruncatedES", "TruncatedESRule", "make", "options", "register"]
