"""A run's parts, made from its configuration: the system, the learned optimizer, the estimator
and the trainer.

This module dispatches; it knows no task and no estimator. The task registry (:mod:`tasks.
registry`) builds what ``--task`` names, with the task's own options (``--task-option``): an
unrolled system, an inner task (trained here by the configured learned optimizer) or a task
distribution. The estimator registry (:mod:`meta_train.engine.estimators`) builds ``--estimator``
with the settings it takes among the shared ones (``num_particles``, ``sigma``,
``unroll_length``, ``lockstep``) and its own options (``--estimator-option``). Every bad value is
one :class:`lopt_meta.ConfigError` naming the field, raised before any compute.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import lopt_meta
import tasks
from lopt_meta.errors import ConfigError, unknown_name
from meta_train.command import checks
from meta_train.command.config import TrainConfig
from meta_train.engine import estimators
from meta_train.engine.trainer import Trainer, outer_optimizer

DEFAULT_INNER_HORIZON = 1000

# What applies to a task that trains a learned optimizer, not to an unrolled system (unless its
# factory takes the setting as an option, as hyperparameter tuning takes data_dir and meta_loss).
_INNER_SETTINGS = ("lopt", "meta_loss", "truncation", "min_horizon", "data_dir")
_SHARED_ESTIMATOR_SETTINGS = ("num_particles", "sigma", "unroll_length", "lockstep")


class RunParts(NamedTuple):
  """What a training run is made of: the system, the estimator over it, the trainer."""
  system: Any  # tasks.UnrolledSystem, or tasks.DistributionSystem
  estimator: estimators.Estimator
  trainer: Trainer


def build_run(config: TrainConfig) -> RunParts:
  """Checks ``config`` and builds the run's parts, before any compute.

  Raises:
    ConfigError: naming the first offending field and its allowed values.
  """
  checks.check(config)
  system = build_system(config)
  if system.theta0 is None:
    raise ConfigError("task", f"task {config.task.task!r} has no default theta0 to start from")
  if not jax.tree.leaves(system.theta0):
    trainable = sorted(n for n in lopt_meta.OPTIMIZERS
                       if jax.tree.leaves(lopt_meta.get_optimizer(n).init_theta(jax.random.key(0))))
    raise ConfigError("lopt", f"{config.task.lopt!r} has no meta-parameters (a fixed optimizer, "
                      f"for comparison): nothing to meta-train; learned optimizers: "
                      f"{', '.join(trainable)}")
  estimator = build_estimator(config, system)
  outer = config.outer
  trainer = Trainer(estimator, outer_optimizer(outer.outer_optimizer, outer.outer_lr,
                                               outer.grad_clip))
  return RunParts(system, estimator, trainer)


def build_system(config: TrainConfig, *, for_evaluation: bool = False,
                 lopt: lopt_meta.LearnedOptimizer | None = None,
                 meta_loss: str = "train"):
  """The configured system (raises ConfigError for an unknown task or option).

  For an inner task, the system trains it with the learned optimizer (``lopt`` replaces the
  configured one, e.g. Adam for the evaluation baseline); ``for_evaluation`` gives every episode
  the full horizon and the meta-loss ``meta_loss`` (the training loss: the quantity compared
  with Adam). For a task distribution: a :class:`tasks.DistributionSystem` of the members'
  systems.
  """
  kind = config.task.kind()
  if kind is None:
    raise unknown_name("task", config.task.task, tasks.names())
  if kind == "system":
    return _unrolled_system(config)
  lopt, theta0 = _lopt_and_theta0(config, lopt)
  meta_loss = meta_loss if for_evaluation else config.task.meta_loss
  if kind == "inner":
    return _inner_system(config, lopt, theta0, for_evaluation=for_evaluation, meta_loss=meta_loss)
  return _distribution_system(config, lopt, theta0, for_evaluation=for_evaluation,
                              meta_loss=meta_loss)


def _unrolled_system(config: TrainConfig):
  """A registered unrolled system with its options; the settings of learned-optimizer training
  apply only where its factory takes them (``data_dir``, ``meta_loss``, ``horizon``)."""
  t = config.task
  takes = tasks.options(t.task)
  for field, value in (("lopt", t.lopt), ("meta_loss", t.meta_loss != "train" or None),
                       ("truncation", t.truncation != "constant" or None),
                       ("min_horizon", t.min_horizon), ("data_dir", t.data_dir)):
    if value is not None and field not in takes:
      raise ConfigError(field, f"applies to inner tasks ({', '.join(tasks.names('inner'))}), "
                        f"not to {t.task!r}")
  options = t.options()
  if t.data_dir is not None:
    options["data_dir"] = t.data_dir
  if t.meta_loss != "train":
    options["meta_loss"] = t.meta_loss
  if t.horizon is not None:
    if "horizon" not in takes:
      raise ConfigError("horizon", f"task {t.task!r} has a fixed horizon")
    options["horizon"] = t.horizon
  return tasks.build(t.task, **options)


def _inner_system(config: TrainConfig, lopt, theta0, *, for_evaluation: bool, meta_loss: str):
  t = config.task
  options = t.options()
  if t.data_dir is not None:
    if "data_dir" not in tasks.options(t.task):
      raise ConfigError("data_dir", f"task {t.task!r} reads no dataset")
    options["data_dir"] = t.data_dir
  inner = tasks.build(t.task, **options)
  horizon = t.horizon if t.horizon is not None else DEFAULT_INNER_HORIZON
  if for_evaluation:
    return tasks.learned_optimizer_system(inner, lopt, horizon=horizon, meta_loss=meta_loss,
                                          truncation="constant", theta0=theta0)
  return tasks.learned_optimizer_system(inner, lopt, horizon=horizon, meta_loss=meta_loss,
                                        truncation=t.truncation, min_horizon=t.min_horizon,
                                        theta0=theta0)


def declared_distribution(config: TrainConfig) -> tasks.Distribution:
  """The distribution ``config`` trains on: registered by name, or declared inline under
  ``task: {distribution: ...}``, with its ``--task-option`` overrides (``tasks_per_step``,
  ``normalize``, ``truncation``; ``--truncation log_uniform`` sets the last)."""
  t = config.task
  overrides = t.options()
  for name in overrides:
    if name not in tasks.Distribution.OVERRIDES:
      raise ConfigError("task_option", f"a distribution takes "
                        f"{', '.join(tasks.Distribution.OVERRIDES)}; got {name!r}")
  if t.truncation == "log_uniform":
    overrides.setdefault("truncation", "log_uniform")
  if t.distribution is not None:
    return tasks.Distribution.from_dict(t.distribution).with_options(**overrides)
  return tasks.build(t.task, **overrides)


def _distribution_system(config: TrainConfig, lopt, theta0, *, for_evaluation: bool,
                         meta_loss: str):
  t = config.task
  for field, value in (("horizon", t.horizon), ("min_horizon", t.min_horizon)):
    if value is not None:
      raise ConfigError(field, "the members of a task distribution carry their own horizons "
                        "(a member's 'horizon'; log_uniform episodes start at horizon // 10)")
  systems = declared_distribution(config).systems(
      lopt, theta0=theta0, meta_loss=meta_loss, data_dir=t.data_dir,
      for_evaluation=for_evaluation)
  return tasks.DistributionSystem(systems, name=f"{t.task}/{lopt.name}")


def build_lopt(config: TrainConfig) -> lopt_meta.LearnedOptimizer:
  """The configured learned optimizer (``--lopt`` with ``--lopt-option``; default ``mlp``): no
  task, no data."""
  t = config.task
  return lopt_meta.get_optimizer(t.lopt or "mlp", **t.lopt_options())


def initial_theta(config: TrainConfig, lopt: lopt_meta.LearnedOptimizer):
  """Theta at outer step 0: ``lopt.init_theta`` from the run's seed, or with ``init_from`` the
  theta of that pretrained optimizer or exported file, which must be the same optimizer with
  the same options.

  Raises:
    ConfigError(init_from): the file or name is not such an optimizer.
  """
  source = config.outer.init_from
  if source is None:
    return lopt.init_theta(jax.random.fold_in(jax.random.key(config.run.seed), 1))
  if source in lopt_meta.PRETRAINED:
    other, theta, _ = lopt_meta.read_pretrained(source)
  elif source.endswith(".npz"):
    try:
      other, theta, _ = lopt_meta.read_optimizer(source)
    except ConfigError as e:
      raise ConfigError("init_from", str(e).split(": ", 1)[1]) from None
  else:
    raise ConfigError("init_from", f"{source!r} is neither a pretrained optimizer "
                      f"({', '.join(sorted(lopt_meta.PRETRAINED))}) nor an exported .npz file")
  if other.name != lopt.name or other.config() != lopt.config():
    raise ConfigError("init_from", f"{source} holds {other.name!r} with {other.config()}; this "
                      f"run trains {lopt.name!r} with {lopt.config()} (set --lopt and "
                      "--lopt-option to match)")
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), theta)


def _lopt_and_theta0(config: TrainConfig, lopt):
  if lopt is None:
    lopt = build_lopt(config)
    return lopt, initial_theta(config, lopt)
  return lopt, lopt.init_theta(jax.random.fold_in(jax.random.key(config.run.seed), 1))


def build_estimator(config: TrainConfig, system) -> estimators.Estimator:
  """The configured estimator, given the shared settings it takes and its own options. For a
  task distribution, one such estimator per member, combined by :class:`estimators.OverTasks`.

  Raises:
    ConfigError: an unknown estimator, an option it does not take, or one it needs and lacks.
  """
  e = config.estimator
  if e.estimator not in estimators.ESTIMATORS:
    raise unknown_name("estimator", e.estimator, estimators.ESTIMATORS)
  takes = estimators.options(e.estimator)
  kwargs = {name: getattr(e, name) for name in _SHARED_ESTIMATOR_SETTINGS if name in takes}
  own = e.options()
  for name in own:
    if name in _SHARED_ESTIMATOR_SETTINGS or name == "devices":
      raise ConfigError("estimator_option", f"{name!r} is not an estimator option"
                        + (f"; set it with --{name.replace('_', '-')}"
                           if name in _SHARED_ESTIMATOR_SETTINGS else ""))
  kwargs.update(own)
  if isinstance(system, tasks.DistributionSystem):
    dist = declared_distribution(config)
    return estimators.OverTasks({name: estimators.make(e.estimator, s, **kwargs)
                                 for name, s in system.systems.items()},
                                tasks_per_step=dist.tasks_per_step, normalize=dist.normalize,
                                name=system.name)
  return estimators.make(e.estimator, system, **kwargs)
