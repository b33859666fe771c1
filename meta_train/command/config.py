"""Typed configuration of a meta-training run: one frozen dataclass per component.

The ``meta-train`` command builds its flags from these classes (with ``tyro``; the flag of a field
is its name with dashes, e.g. ``num_particles`` -> ``--num-particles``), and a run folder stores
the whole tree as ``config.json``. :func:`validate` checks everything that can be checked before
any compute and raises :class:`lopt_meta.ConfigError` naming the field.

Importing this module does not import tyro: the annotations are strings (PEP 563) that only the
command evaluates, and the flag help in them imports tyro then (:mod:`.flags`).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import jax
import jax.numpy as jnp
import yaml

import lopt_meta
import tasks
from lopt_meta.errors import ConfigError, check_positive_int, unknown_name
from meta_train.command import flags
from meta_train.engine import estimators

OUTER_OPTIMIZERS = ("adam", "sgd")


def _task_names() -> list[str]:
  return sorted(tasks.TASKS) + sorted(tasks.INNER_TASKS) + sorted(tasks.DISTRIBUTIONS)


def _yaml_values(pairs: dict[str, str]) -> dict[str, Any]:
  """NAME VALUE pairs with typed values (``"500"`` -> 500, ``"0.1"`` -> 0.1, ``"[1, 2]"`` -> (1, 2))."""
  out = {}
  for key, value in pairs.items():
    out[key] = yaml.safe_load(value) if isinstance(value, str) else value
    if isinstance(out[key], list):
      out[key] = tuple(out[key])
  return out


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """The inner problem: an unrolled system, or an inner task trained by a learned optimizer."""

  task: Annotated[str, flags.tyro().conf.arg(
      help=f"Registered task, one of: {', '.join(_task_names())}.")] = "toy2d"
  task_option: dict[str, str] = dataclasses.field(default_factory=dict)
  """Task overrides as NAME VALUE pairs (values read as YAML scalars), e.g. --task-option hidden_sizes [64]."""
  horizon: int | None = None
  """T, steps per episode (inner training steps for a learned optimizer; default: the task's own, 1000 for inner tasks)."""
  lopt: Annotated[str | None, flags.tyro().conf.arg(
      help=f"Learned optimizer for inner tasks, one of: {', '.join(sorted(lopt_meta.OPTIMIZERS))} "
           "(default mlp).")] = None
  lopt_option: dict[str, str] = dataclasses.field(default_factory=dict)
  """Learned-optimizer overrides as NAME VALUE pairs, e.g. --lopt-option hidden_sizes [16,16]."""
  meta_loss: Literal["train", "valid", "telescoping"] = "train"
  """Per-step meta-loss of inner training: the training loss, the loss on a fresh outer-validation batch, or the per-step differences of the loss on a fixed training batch (their sum is the final loss)."""
  truncation: Literal["constant", "log_uniform"] = "constant"
  """Episode lengths of learned-optimizer training: always T, or log-uniform in [min_horizon, T]."""
  min_horizon: int | None = None
  """Shortest episode for --truncation log_uniform (default T // 10)."""
  data_dir: str | None = None
  """Where datasets are (a tfds data dir, FashionMNIST IDX files, cifar-10-batches-py)."""
  distribution: Annotated[dict[str, Any] | None, flags.tyro().conf.Suppress] = None
  """A task distribution declared inline (the YAML form of tasks.Distribution, set in a --config
  file under task: {task: NAME, distribution: {...}}); NAME then names it in logs."""

  def options(self) -> dict[str, Any]:
    """The task overrides with typed values."""
    return _yaml_values(self.task_option)

  def lopt_options(self) -> dict[str, Any]:
    return _yaml_values(self.lopt_option)

  @property
  def is_distribution(self) -> bool:
    return self.distribution is not None or self.task in tasks.DISTRIBUTIONS

  @property
  def is_inner(self) -> bool:
    """Whether a learned optimizer is trained (on an inner task or a task distribution)."""
    return self.task in tasks.INNER_TASKS or self.is_distribution

  def declared_distribution(self) -> tasks.Distribution:
    """The distribution this config trains on, with its ``--task-option`` overrides
    (``tasks_per_step``, ``normalize``, ``truncation``)."""
    if self.distribution is not None:
      dist = tasks.Distribution.from_dict(self.distribution)
    else:
      dist = tasks.get_distribution(self.task)
    overrides = self.options()
    allowed = ("tasks_per_step", "normalize", "truncation")
    for name in overrides:
      if name not in allowed:
        raise ConfigError("task_option", f"a distribution takes {', '.join(allowed)}; got {name!r}")
    if self.truncation == "log_uniform":
      overrides.setdefault("truncation", "log_uniform")
    dist = dataclasses.replace(dist, **overrides)
    dist.check()
    return dist


@dataclasses.dataclass(frozen=True)
class EstimatorConfig:
  """The gradient estimator (N counts particles: N/2 antithetic pairs)."""

  estimator: Annotated[str, flags.tyro().conf.arg(
      help=f"Gradient estimator, one of: {', '.join(estimators.ESTIMATORS)}.")] = "nres"
  num_particles: int = 100
  """N, the number of particles (even for ES: N/2 antithetic pairs)."""
  sigma: float = 0.1
  """Standard deviation of the ES noise."""
  unroll_length: int = 10
  """W, steps per truncation window (ignored by full_es)."""
  K: int | None = None
  """Steps per noise block for gpes (counted from the episode start)."""
  lockstep: bool = False
  """Start every worker at step 0 instead of step-unlocking them by a burn-in."""


@dataclasses.dataclass(frozen=True)
class OuterConfig:
  """The outer (meta-) optimization of theta."""

  outer_steps: int = 1000
  """Number of outer updates of theta."""
  outer_lr: float = 1e-2
  """Learning rate of the outer optimizer."""
  outer_optimizer: Literal["adam", "sgd"] = "adam"
  """Outer optimizer (optax)."""
  grad_clip: float | None = None
  """Clip each estimate to this global norm before the update (None: no clipping)."""
  init_from: str | None = None
  """Start theta from a pretrained optimizer's name or an exported .npz (the same learned optimizer and options), with fresh workers: fine-tuning, or continuing on another machine."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Seeds, output and logging."""

  seed: int = 0
  """Seed of every random number in the run."""
  out: Path | None = None
  """Run folder (default: checkpoints/<run-name>)."""
  log_every: int = 10
  """Write a line to metrics.jsonl every this many outer steps (the mean over them)."""
  eval_every: int = 100
  """Evaluate the unsmoothed full-horizon loss of theta every this many outer steps (0: never)."""
  eval_episodes: int = 4
  """Fresh episodes per evaluation."""
  eval_steps: int = 1000
  """Steps per evaluation episode for systems that never reset."""
  heldout_every: int = 0
  """Meta-validate theta on the held-out tasks of tasks.heldout.VALIDATION every this many outer steps, keeping the best as RUN/best.npz (0: never; learned optimizers only)."""
  baseline_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2)
  """Adam learning rates of the baseline beside a learned optimizer (the best one is reported)."""
  checkpoint_every: int = 100
  """Save an Orbax checkpoint every this many outer steps (and at the end, and on SIGINT/SIGTERM)."""
  keep_checkpoints: int = 3
  """Keep the last this many checkpoints."""
  wandb: Literal["online", "offline", "disabled"] | None = None
  """Weights & Biases mode (default: online if an API key is configured, else offline)."""
  stop_grace_s: float = 30.0
  """After SIGINT/SIGTERM, end the run without saving if its compiled step has not returned after this many seconds."""
  stall_warning_s: float = 60.0
  """Warn when a chunk of outer steps runs 5x longer than the recent ones and at least this many seconds."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Meta-train theta of an unrolled system with an online ES estimator."""

  task: TaskConfig = TaskConfig()
  estimator: EstimatorConfig = EstimatorConfig()
  outer: OuterConfig = OuterConfig()
  run: RunConfig = RunConfig()

  def run_name(self) -> str:
    e = self.estimator
    lopt = f"-{self.task.lopt or 'mlp'}" if self.task.is_inner else ""
    return (f"{self.task.task}{lopt}-{e.estimator}-N{e.num_particles}-W{e.unroll_length}"
            f"-seed{self.run.seed}")

  def run_dir(self) -> Path:
    return Path(self.run.out) if self.run.out is not None else Path("checkpoints") / self.run_name()

  def to_dict(self) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(self), default=str))

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
    """From the nested form of ``config.json`` (``{"task": {...}, "estimator": {...}, ...}``) or a
    flat mapping of field names (``{"task": "lorenz", "num_particles": 8, ...}``), or a mix.

    Raises:
      ConfigError: an unknown field (the message lists the valid ones).
    """
    groups = {f.name: f.type for f in dataclasses.fields(cls)}
    members = {name: {f.name for f in dataclasses.fields(kind)} for name, kind in _GROUPS.items()}
    nested = {name: {} for name in _GROUPS}
    for key, value in d.items():
      if key in groups and isinstance(value, dict):
        for k, v in value.items():
          if k not in members[key]:
            raise ConfigError(k, f"unknown {key} setting {k!r}; valid: {', '.join(sorted(members[key]))}")
          nested[key][k] = v
        continue
      owner = next((name for name, names in members.items() if key in names), None)
      if owner is None:
        valid = sorted(set().union(*members.values()))
        raise ConfigError(key, f"unknown setting {key!r}; valid: {', '.join(valid)}")
      nested[owner][key] = value
    if nested["task"].get("meta_loss") == "outer_valid":  # its name in runs before 2026-12
      nested["task"]["meta_loss"] = "valid"
    run = nested["run"]
    if run.get("out") is not None:
      run["out"] = Path(run["out"])
    if "baseline_lrs" in run:
      run["baseline_lrs"] = tuple(run["baseline_lrs"])
    return cls(**{name: _GROUPS[name](**values) for name, values in nested.items()})

  @classmethod
  def from_file(cls, path: str | Path) -> "TrainConfig":
    """From a YAML or JSON file (see :meth:`from_dict`)."""
    path = Path(path)
    try:
      data = yaml.safe_load(path.read_text())  # YAML reads JSON too
    except FileNotFoundError:
      raise ConfigError("config", f"no such file: {path}") from None
    except yaml.YAMLError as e:
      raise ConfigError("config", f"{path} is not valid YAML or JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
      raise ConfigError("config", f"{path} must hold a mapping of settings")
    return cls.from_dict(data)


_GROUPS = {"task": TaskConfig, "estimator": EstimatorConfig, "outer": OuterConfig,
           "run": RunConfig}


def _positive_float(field: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
      value > 0 and math.isfinite(value)):
    raise ConfigError(field, f"must be a positive finite number; got {value!r}")


DEFAULT_INNER_HORIZON = 1000


def build_system(config: TrainConfig, *, for_evaluation: bool = False,
                 lopt: lopt_meta.LearnedOptimizer | None = None,
                 meta_loss: str = "train", member: str | None = None):
  """The configured system (raises ConfigError for an unknown task or option).

  For inner tasks, the system trains the task with the learned optimizer (``lopt`` replaces the
  configured one, e.g. Adam for the evaluation baseline); ``for_evaluation`` gives every episode
  the full horizon and the meta-loss ``meta_loss`` (the training loss: the quantity compared
  with Adam). For a task distribution: a :class:`tasks.DistributionSystem` of the members'
  systems, or with ``member`` that member's system alone.
  """
  t = config.task
  if t.is_distribution:
    return _distribution_system(config, for_evaluation=for_evaluation, lopt=lopt,
                                meta_loss=meta_loss, member=member)
  if t.task in tasks.TASKS:
    takes = tasks.override_names(t.task)  # a task that reads data, or has meta-losses, takes them
    for field, value in (("lopt", t.lopt), ("meta_loss", t.meta_loss != "train" or None),
                         ("truncation", t.truncation != "constant" or None),
                         ("min_horizon", t.min_horizon), ("data_dir", t.data_dir)):
      if value is not None and field not in takes:
        raise ConfigError(field, f"applies to inner tasks ({', '.join(sorted(tasks.INNER_TASKS))}), "
                          f"not to {t.task!r}")
    options = t.options()
    if t.data_dir is not None:
      options["data_dir"] = t.data_dir
    if t.meta_loss != "train":
      options["meta_loss"] = t.meta_loss
    if t.horizon is not None:
      if "horizon" not in tasks.override_names(t.task):
        raise ConfigError("horizon", f"task {t.task!r} has a fixed horizon")
      options["horizon"] = t.horizon
    return tasks.get(t.task, **options)
  if t.task not in tasks.INNER_TASKS:
    raise unknown_name("task", t.task, _task_names())
  options = t.options()
  if t.data_dir is not None:
    if "data_dir" not in inspect.signature(tasks.INNER_TASKS[t.task]).parameters:
      raise ConfigError("data_dir", f"task {t.task!r} reads no dataset")
    options["data_dir"] = t.data_dir
  inner = tasks.get_inner_task(t.task, **options)
  lopt, theta0 = _lopt_and_theta0(config, lopt)
  horizon = t.horizon if t.horizon is not None else DEFAULT_INNER_HORIZON
  if for_evaluation:
    return tasks.learned_optimizer_system(inner, lopt, horizon=horizon, meta_loss=meta_loss,
                                          truncation="constant", theta0=theta0)
  return tasks.learned_optimizer_system(inner, lopt, horizon=horizon, meta_loss=t.meta_loss,
                                        truncation=t.truncation, min_horizon=t.min_horizon,
                                        theta0=theta0)


def build_lopt(config: TrainConfig) -> lopt_meta.LearnedOptimizer:
  """The configured learned optimizer (``--lopt`` with ``--lopt-option``; default ``mlp``)."""
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


def _distribution_system(config: TrainConfig, *, for_evaluation, lopt, meta_loss, member):
  t = config.task
  for field, value in (("horizon", t.horizon), ("min_horizon", t.min_horizon)):
    if value is not None:
      raise ConfigError(field, "the members of a task distribution carry their own horizons "
                        "(a member's 'horizon'; log_uniform episodes start at horizon // 10)")
  dist = t.declared_distribution()
  lopt, theta0 = _lopt_and_theta0(config, lopt)
  systems = dist.systems(lopt, theta0=theta0, meta_loss=meta_loss if for_evaluation else t.meta_loss,
                         data_dir=t.data_dir, for_evaluation=for_evaluation)
  if member is not None:
    if member not in systems:
      raise unknown_name("member", member, list(systems))
    return systems[member]
  return tasks.DistributionSystem(systems, name=f"{t.task}/{lopt.name}")


def build_estimator(config: TrainConfig, system) -> estimators.Estimator:
  """The configured estimator; only the options the chosen estimator takes are passed. For a
  task distribution, one such estimator per member, combined by :class:`estimators.OverTasks`."""
  e = config.estimator
  if e.estimator not in estimators.ESTIMATORS:
    raise unknown_name("estimator", e.estimator, estimators.ESTIMATORS)
  allowed = estimators.options(e.estimator)
  if e.K is not None and "K" not in allowed:
    raise ConfigError("K", f"only gpes takes K; estimator is {e.estimator!r}")
  if "K" in allowed and e.K is None:
    raise ConfigError("K", "gpes needs K, the steps per noise block (e.g. --K 100)")
  kwargs = {"num_particles": e.num_particles, "sigma": e.sigma, "unroll_length": e.unroll_length,
            "K": e.K, "lockstep": e.lockstep}
  kwargs = {k: v for k, v in kwargs.items() if k in allowed}
  if isinstance(system, tasks.DistributionSystem):
    dist = config.task.declared_distribution()
    return estimators.OverTasks({name: estimators.make(e.estimator, s, **kwargs)
                                 for name, s in system.systems.items()},
                                tasks_per_step=dist.tasks_per_step, normalize=dist.normalize,
                                name=system.name)
  return estimators.make(e.estimator, system, **kwargs)


def validate(config: TrainConfig) -> tuple[tasks.UnrolledSystem, estimators.Estimator]:
  """Checks the whole configuration before any compute; returns the system and estimator.

  Raises:
    ConfigError: naming the first offending field and its allowed values.
  """
  if config.outer.outer_optimizer not in OUTER_OPTIMIZERS:
    raise unknown_name("outer_optimizer", config.outer.outer_optimizer, OUTER_OPTIMIZERS)
  check_positive_int("outer_steps", config.outer.outer_steps)
  _positive_float("outer_lr", config.outer.outer_lr)
  if config.outer.grad_clip is not None:
    _positive_float("grad_clip", config.outer.grad_clip)
  check_positive_int("log_every", config.run.log_every)
  check_positive_int("eval_episodes", config.run.eval_episodes)
  check_positive_int("eval_steps", config.run.eval_steps)
  check_positive_int("checkpoint_every", config.run.checkpoint_every)
  check_positive_int("keep_checkpoints", config.run.keep_checkpoints)
  _positive_float("stop_grace_s", config.run.stop_grace_s)
  _positive_float("stall_warning_s", config.run.stall_warning_s)
  if config.run.wandb is not None and config.run.wandb not in ("online", "offline", "disabled"):
    raise unknown_name("wandb", config.run.wandb, ("online", "offline", "disabled"))
  if not config.run.baseline_lrs:
    raise ConfigError("baseline_lrs", "needs at least one learning rate")
  for lr in config.run.baseline_lrs:
    _positive_float("baseline_lrs", lr)
  if isinstance(config.run.eval_every, bool) or not isinstance(config.run.eval_every, int) or (
      config.run.eval_every < 0):
    raise ConfigError("eval_every", f"must be an int >= 0 (0: never); got {config.run.eval_every!r}")
  if isinstance(config.run.heldout_every, bool) or not isinstance(
      config.run.heldout_every, int) or config.run.heldout_every < 0:
    raise ConfigError("heldout_every", f"must be an int >= 0 (0: never); got "
                      f"{config.run.heldout_every!r}")
  if config.run.heldout_every and not config.task.is_inner:
    raise ConfigError("heldout_every", f"meta-validates learned optimizers; task "
                      f"{config.task.task!r} trains none")
  if config.outer.init_from is not None and not config.task.is_inner:
    raise ConfigError("init_from", f"starts a learned optimizer; task {config.task.task!r} "
                      "trains none")
  if not isinstance(config.run.seed, int) or isinstance(config.run.seed, bool):
    raise ConfigError("seed", f"must be an int; got {config.run.seed!r}")
  system = build_system(config)
  if system.theta0 is None:
    raise ConfigError("task", f"task {config.task.task!r} has no default theta0 to start from")
  if not jax.tree.leaves(system.theta0):
    trainable = sorted(n for n in lopt_meta.OPTIMIZERS
                       if jax.tree.leaves(lopt_meta.get_optimizer(n).init_theta(jax.random.key(0))))
    raise ConfigError("lopt", f"{config.task.lopt!r} has no meta-parameters (a fixed optimizer, "
                      f"for comparison): nothing to meta-train; learned optimizers: "
                      f"{', '.join(trainable)}")
  return system, build_estimator(config, system)
