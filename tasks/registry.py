"""The task registry: a plain dict from name to a factory of keyword-only overrides.

>>> import tasks
>>> sorted(tasks.TASKS)
['halfcheetah', 'hopper', 'influence_balancing', 'lorenz', 'lr_decay_schedule', 'many_hparams',
 'rnn_copy', 'swimmer', 'toy2d', 'walker2d']
>>> tasks.get("lorenz", horizon=500).horizon
500
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from lopt_meta.errors import ConfigError, build_named, unknown_name
from tasks import dynamical, rnn_copy
from tasks.hpo import paper_tasks as hparam_tuning
from tasks.locomotion import policy_learning
from tasks.base import UnrolledSystem

TASKS: dict[str, Callable[..., UnrolledSystem]] = {
    "toy2d": dynamical.toy2d,
    "influence_balancing": dynamical.influence_balancing,
    "lorenz": dynamical.lorenz,
    **policy_learning.REGISTERED,
    **hparam_tuning.REGISTERED,
    "rnn_copy": rnn_copy.rnn_copy,
}


def override_names(name: str) -> list[str]:
  """The keyword overrides that task ``name`` accepts."""
  if name not in TASKS:
    raise unknown_name("task", name, TASKS)
  return list(inspect.signature(TASKS[name]).parameters)


def get(name: str, **overrides) -> UnrolledSystem:
  """Returns the registered system ``name`` configured with ``overrides``.

  Raises:
    ConfigError: for an unknown name (the message lists the registered names) or an override the
      task does not take (the message lists the ones it does).
  """
  return build_named("task", TASKS, name, overrides)


def register(name: str, factory: Callable[..., UnrolledSystem], *, overwrite: bool = False) -> None:
  """Adds ``factory`` (keyword-only options -> UnrolledSystem) to the registry under ``name``."""
  if name in TASKS and not overwrite:
    raise ConfigError("task", f"{name!r} is already registered; pass overwrite=True to replace it")
  TASKS[name] = factory
