"""The ``meta-train`` command.

    meta-train train --task digits_mlp --lopt mlp --estimator nres --num-particles 32 ...
    meta-train train --config run.yaml --num-particles 8      # a file, then flag overrides
    meta-train resume RUN_DIR --outer-steps 20000             # continue to 20000 steps in total
    meta-train eval RUN_DIR                                   # evaluate the latest checkpoint
    meta-train export RUN_DIR --out lopt.npz                  # the learned optimizer, for optax
    meta-train plot RUN_DIR [RUN_DIR ...] --out runs.png

Flags come from the typed configuration in :mod:`meta_train.config` (parsed by ``tyro``, which is
imported when a command line is parsed, not with this module). Bad
input ends with one line ``meta-train: error: FIELD: ...`` and exit status 2, before any compute
and without touching what is already saved. A run stopped by SIGINT/SIGTERM saves a checkpoint
and exits with 130/143.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

from lopt_meta.errors import ConfigError
from meta_train import config as config_lib
from meta_train.config import _tyro  # the annotations below are evaluated by tyro only

EXIT_USAGE = 2


@dataclasses.dataclass
class Train:
  """Meta-train theta of a task (a learned optimizer for inner tasks) with an online ES estimator.

  Writes config.json, metrics.jsonl, Orbax checkpoints and W&B files to the run folder
  (--out, default checkpoints/<run-name>).
  """

  config: config_lib.TrainConfig = dataclasses.field(default_factory=config_lib.TrainConfig)
  config_file: Annotated[Path | None, _tyro().conf.arg(
      name="config", help="A YAML or JSON file of settings (nested as in a run's config.json, or "
      "flat by field name); flags override it.")] = None
  overwrite: bool = False
  """Replace a run already in the run folder (its checkpoints and metrics are deleted)."""


@dataclasses.dataclass
class Resume:
  """Continue a run from its latest readable checkpoint, exactly as if it had not stopped."""

  run_dir: _tyro().conf.Positional[Path]
  outer_steps: int | None = None
  """The new total number of outer steps (default: the run's configured number)."""
  wandb: Literal["online", "offline", "disabled"] | None = None
  """Weights & Biases mode for this session (default: the run's)."""
  stop_grace_s: float | None = None
  """After SIGINT/SIGTERM, end without saving if the compiled step has not returned after this many seconds (default: the run's)."""


@dataclasses.dataclass
class Eval:
  """Evaluate a run's theta (latest checkpoint): full-horizon loss on fixed fresh episodes and,
  for learned optimizers, the Adam baseline. Prints a table and a JSON line; changes nothing."""

  run_dir: _tyro().conf.Positional[Path]
  step: int | None = None
  """Evaluate this checkpoint step instead of the latest."""
  episodes: int | None = None
  """Evaluation episodes (default: the run's eval_episodes)."""


@dataclasses.dataclass
class Export:
  """Write a run's learned optimizer (architecture + theta, no pickles) to one file; load it with
  lopt_meta.load_optimizer(PATH) as an optax transformation."""

  run_dir: _tyro().conf.Positional[Path]
  out: Path
  """The file to write (a .npz)."""
  step: int | None = None
  """Export this checkpoint step instead of the latest."""
  overwrite: bool = False
  """Replace an existing file at --out."""


@dataclasses.dataclass
class Plot:
  """Plot runs: meta-loss against outer steps, wall time and inner steps, and the evaluation
  curves of the learned optimizer beside the baseline, to a PNG."""

  run_dirs: _tyro().conf.Positional[tuple[Path, ...]]
  out: Path
  """The PNG to write."""


COMMANDS = {"train": Train, "resume": Resume, "eval": Eval, "export": Export, "plot": Plot}


def _config_path(args: Sequence[str]) -> str | None:
  """The value of ``--config`` in ``args`` (located so the file can serve as the defaults)."""
  for i, arg in enumerate(args):
    if arg == "--config" and i + 1 < len(args):
      return args[i + 1]
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
  return None


def _parse(name: str, args: list[str]):
  kind = COMMANDS[name]
  default = None
  if name == "train" and (path := _config_path(args)) is not None:
    default = Train(config=config_lib.TrainConfig.from_file(path), config_file=Path(path))
  tyro = _tyro()
  return tyro.cli(kind, args=args, default=default, prog=f"meta-train {name}",
                  config=(tyro.conf.OmitArgPrefixes,))


def run_command(command) -> int:
  from meta_train import run as run_lib  # imports JAX: keep --help fast
  if isinstance(command, Train):
    run_lib.train(command.config, overwrite=command.overwrite)
  elif isinstance(command, Resume):
    run_lib.resume(command.run_dir, outer_steps=command.outer_steps, wandb=command.wandb,
                   stop_grace_s=command.stop_grace_s)
  elif isinstance(command, Eval):
    _eval(command)
  elif isinstance(command, Export):
    _export(command)
  elif isinstance(command, Plot):
    from meta_train.plots import plot_runs
    print(f"meta-train: wrote {plot_runs(command.run_dirs, command.out)}")
  return 0


def _eval(command: Eval) -> None:
  from meta_train import evaluation
  from meta_train import run as run_lib
  if command.episodes is not None:
    config_lib._positive_int("episodes", command.episodes)
  loaded = run_lib.load_run(command.run_dir, command.step)
  config = loaded.config
  if command.episodes is not None:
    config = dataclasses.replace(config, run=dataclasses.replace(
        config.run, eval_episodes=command.episodes))
  evaluator = evaluation.Evaluator(config, loaded.system)  # the run's system, built once
  result = {"run_dir": str(command.run_dir), "step": loaded.step, **evaluator(loaded.theta),
            **evaluator.baseline()}
  line = f"{command.run_dir} at outer step {loaded.step}: eval_loss {result['eval_loss']:.6g}"
  if "adam_loss" in result:
    line += (f"; Adam lr {result['adam_lr']:g}: {result['adam_loss']:.6g} "
             f"(ratio {result['eval_vs_adam']:.3f})")
  print(line)
  print(json.dumps({k: v for k, v in result.items() if not k.endswith("_curve")}))


def _export(command: Export) -> None:
  import lopt_meta
  from meta_train import run as run_lib
  config = run_lib.read_config(command.run_dir)
  if not config.task.is_inner:
    raise ConfigError("run_dir", f"{command.run_dir} trained theta of {config.task.task!r}, not a "
                      "learned optimizer; nothing to export")
  out = Path(command.out)
  if out.exists() and not command.overwrite:
    raise ConfigError("out", f"{out} exists; choose another --out or pass --overwrite")
  loaded = run_lib.load_run(command.run_dir, command.step)
  lopt = lopt_meta.get_optimizer(config.task.lopt or "mlp", **config.task.lopt_options())
  lopt_meta.save_optimizer(out, lopt, loaded.theta, metadata={
      "run_dir": str(command.run_dir), "step": loaded.step, "task": config.task.task,
      "estimator": config.estimator.estimator})
  print(f"meta-train: wrote {out} ({lopt.name}, outer step {loaded.step}); load it with "
        f"lopt_meta.load_optimizer({str(out)!r})")


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    if not argv or argv[0] not in COMMANDS:  # top-level help, or an unknown command
      tyro = _tyro()
      tyro.extras.subcommand_cli_from_dict(
          COMMANDS, prog="meta-train", args=argv, config=(tyro.conf.OmitArgPrefixes,),
          description="Meta-train learned optimizers and other unrolled systems with online ES.")
      return EXIT_USAGE
    return run_command(_parse(argv[0], argv[1:]))
  except ConfigError as e:
    print(f"meta-train: error: {e}", file=sys.stderr)
    return EXIT_USAGE
  except Exception as e:
    from meta_train.run import Interrupted
    if isinstance(e, Interrupted):
      print(f"meta-train: {e}", file=sys.stderr)
      return e.code
    raise


if __name__ == "__main__":
  sys.exit(main())
