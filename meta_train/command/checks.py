"""The checks of a run's configuration that need nothing built: each value in its range.

:func:`check` raises one :class:`lopt_meta.ConfigError` naming the first offending field and its
allowed values; what only the task or the estimator can judge (their options, ``W`` against the
horizon, ...) is checked when :mod:`.build` makes them, still before any compute.
"""

from __future__ import annotations

import math

from lopt_meta.errors import ConfigError, check_positive_int, unknown_name
from meta_train.command.config import TrainConfig

OUTER_OPTIMIZERS = ("adam", "sgd")
WANDB_MODES = ("online", "offline", "disabled")


def positive_float(field: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
      value > 0 and math.isfinite(value)):
    raise ConfigError(field, f"must be a positive finite number; got {value!r}")


def _every(field: str, value) -> None:
  """An ``*_every`` setting: an int >= 0, where 0 means never."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ConfigError(field, f"must be an int >= 0 (0: never); got {value!r}")


def check(config: TrainConfig) -> None:
  """Checks the outer loop's and the run's settings, and the task settings that only apply to
  learned optimizers.

  Raises:
    ConfigError: naming the first offending field and its allowed values.
  """
  outer, run = config.outer, config.run
  if outer.outer_optimizer not in OUTER_OPTIMIZERS:
    raise unknown_name("outer_optimizer", outer.outer_optimizer, OUTER_OPTIMIZERS)
  check_positive_int("outer_steps", outer.outer_steps)
  positive_float("outer_lr", outer.outer_lr)
  if outer.grad_clip is not None:
    positive_float("grad_clip", outer.grad_clip)
  for field in ("log_every", "eval_episodes", "eval_steps", "checkpoint_every",
                "keep_checkpoints"):
    check_positive_int(field, getattr(run, field))
  positive_float("stop_grace_s", run.stop_grace_s)
  positive_float("stall_warning_s", run.stall_warning_s)
  if run.wandb is not None and run.wandb not in WANDB_MODES:
    raise unknown_name("wandb", run.wandb, WANDB_MODES)
  if not run.baseline_lrs:
    raise ConfigError("baseline_lrs", "needs at least one learning rate")
  for lr in run.baseline_lrs:
    positive_float("baseline_lrs", lr)
  _every("eval_every", run.eval_every)
  _every("heldout_every", run.heldout_every)
  if run.heldout_every and not config.task.is_inner:
    raise ConfigError("heldout_every", f"meta-validates learned optimizers; task "
                      f"{config.task.task!r} trains none")
  if outer.init_from is not None and not config.task.is_inner:
    raise ConfigError("init_from", f"starts a learned optimizer; task {config.task.task!r} "
                      "trains none")
  if not isinstance(run.seed, int) or isinstance(run.seed, bool):
    raise ConfigError("seed", f"must be an int; got {run.seed!r}")
