"""Typed configuration of a meta-training run: one frozen dataclass per component.

The ``meta-train`` command builds its flags from these classes (with ``tyro``; the flag of a field
is its name with dashes, e.g. ``num_particles`` -> ``--num-particles``), and a run folder stores
the whole tree as ``config.json``. This module is the schema and its parsing (files, flat or
nested mappings, the renames of older runs); :mod:`.checks` checks the values before any compute,
and :mod:`.build` makes the system, the estimator and the trainer (dispatching to the task and
estimator registries, where each task and estimator declares its own options).

Importing this module does not import tyro: the annotations are strings (PEP 563) that only the
command evaluates, and the flag help in them imports tyro then (:mod:`.flags`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

import lopt_meta
import tasks
from lopt_meta.errors import ConfigError
from meta_train.command import flags
from meta_train.engine import estimators


_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _yaml_values(pairs: dict[str, str]) -> dict[str, Any]:
  """NAME VALUE pairs with typed values (``"500"`` -> 500, ``"0.1"`` and ``"1e-1"`` -> 0.1,
  ``"[1, 2]"`` -> (1, 2)): YAML scalars, and numbers with an exponent (YAML 1.1 reads ``1e-3``,
  without a dot, as a string)."""
  out = {}
  for key, value in pairs.items():
    if isinstance(value, str):
      value = float(value) if _EXPONENT_NUMBER.fullmatch(value.strip()) else yaml.safe_load(value)
    out[key] = tuple(value) if isinstance(value, list) else value
  return out


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """The inner problem: an unrolled system, or an inner task trained by a learned optimizer."""

  task: Annotated[str, flags.tyro().conf.arg(
      help=f"Registered task, one of: {', '.join(tasks.names())}.")] = "toy2d"
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

  def kind(self) -> str | None:
    """What the task builds (``"system"``, ``"inner"``, ``"distribution"``; None: unknown)."""
    if self.distribution is not None:
      return "distribution"
    entry = tasks.TASKS.get(self.task)
    return None if entry is None else entry.kind

  @property
  def is_distribution(self) -> bool:
    return self.kind() == "distribution"

  @property
  def is_inner(self) -> bool:
    """Whether a learned optimizer is trained (on an inner task or a task distribution)."""
    return self.kind() in ("inner", "distribution")


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
  lockstep: bool = False
  """Start every worker at step 0 instead of step-unlocking them by a burn-in."""
  estimator_option: dict[str, str] = dataclasses.field(default_factory=dict)
  """The chosen estimator's own options as NAME VALUE pairs (values read as YAML scalars), e.g. --estimator-option K 100 for gpes (K, the steps per noise block)."""

  def options(self) -> dict[str, Any]:
    """The estimator's own options with typed values."""
    return _yaml_values(self.estimator_option)


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
    members["estimator"].add("K")  # the settings of older runs, renamed by _rename_legacy
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
    _rename_legacy(nested)
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


def _rename_legacy(nested: dict[str, dict[str, Any]]) -> None:
  """The settings of runs written before 2026-12, in today's names: ``meta_loss: outer_valid`` is
  ``valid``; gpes's ``K`` (a field of its own then) is an estimator option."""
  if nested["task"].get("meta_loss") == "outer_valid":
    nested["task"]["meta_loss"] = "valid"
  estimator = nested["estimator"]
  if "K" in estimator:
    K = estimator.pop("K")
    if K is not None:
      estimator["estimator_option"] = {**estimator.get("estimator_option", {}), "K": K}
