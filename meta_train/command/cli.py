"""The ``meta-train`` command.

    meta-train train --task digits_mlp --lopt mlp --estimator nres --num-particles 32 ...
    meta-train train --config run.yaml --num-particles 8      # a file, then flag overrides
    meta-train resume RUN_DIR --outer-steps 20000             # continue to 20000 steps in total
    meta-train train ... --coordinator-address HOST:PORT --num-processes 2 --process-id 0  # one run, several processes
    meta-train eval RUN_DIR                                   # evaluate the latest checkpoint
    meta-train export RUN_DIR --out lopt.npz                  # the learned optimizer, for optax
    meta-train plot RUN_DIR [RUN_DIR ...] --out runs.png
    meta-train search --task many_hparams --budget 60000 --out checkpoints/random  # a baseline
    meta-train bench anchored_wc_nres --seeds 3              # the held-out suite vs tuned Adam

Flags come from the typed configuration in :mod:`meta_train.command.config` (parsed by ``tyro``, which is
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

from lopt_meta.errors import ConfigError, check_positive_int
from meta_train.command.errors import CheckpointError
from meta_train.command import config as config_lib
from meta_train.command import flags  # the annotations below are evaluated by tyro only
from meta_train.command.distributed import Distributed

EXIT_USAGE = 2


@dataclasses.dataclass
class Train:
  """Meta-train theta of a task (a learned optimizer for inner tasks) with an online ES estimator.

  Writes config.json, metrics.jsonl, Orbax checkpoints and W&B files to the run folder
  (--out, default checkpoints/<run-name>).
  """

  config: config_lib.TrainConfig = dataclasses.field(default_factory=config_lib.TrainConfig)
  config_file: Annotated[Path | None, flags.tyro().conf.arg(
      name="config", help="A YAML or JSON file of settings (nested as in a run's config.json, or "
      "flat by field name); flags override it.")] = None
  overwrite: bool = False
  """Replace a run already in the run folder (its checkpoints and metrics are deleted)."""
  distributed: Distributed = dataclasses.field(default_factory=Distributed)


@dataclasses.dataclass
class Resume:
  """Continue a run from its latest readable checkpoint, exactly as if it had not stopped."""

  run_dir: flags.tyro().conf.Positional[Path]
  outer_steps: int | None = None
  """The new total number of outer steps (default: the run's configured number)."""
  wandb: Literal["online", "offline", "disabled"] | None = None
  """Weights & Biases mode for this session (default: the run's)."""
  stop_grace_s: float | None = None
  """After SIGINT/SIGTERM, end without saving if the compiled step has not returned after this many seconds (default: the run's)."""
  distributed: Distributed = dataclasses.field(default_factory=Distributed)


@dataclasses.dataclass
class Eval:
  """Evaluate a run's theta (latest checkpoint): full-horizon loss on fixed fresh episodes and,
  for learned optimizers, the Adam baseline. Prints a table and a JSON line; changes nothing."""

  run_dir: flags.tyro().conf.Positional[Path]
  step: int | None = None
  """Evaluate this checkpoint step instead of the latest."""
  episodes: int | None = None
  """Evaluation episodes (default: the run's eval_episodes)."""


@dataclasses.dataclass
class Export:
  """Write a run's learned optimizer (architecture + theta, no pickles) to one file; load it with
  lopt_meta.load_optimizer(PATH) as an optax transformation. For a hyperparameter task, write
  the tuned hyperparameters as JSON (constrained values and theta)."""

  run_dir: flags.tyro().conf.Positional[Path]
  out: Path
  """The file to write (a .npz; .json for hyperparameters)."""
  step: int | None = None
  """Export this checkpoint step instead of the latest."""
  overwrite: bool = False
  """Replace an existing file at --out."""


@dataclasses.dataclass
class Plot:
  """Plot runs: meta-loss against outer steps, wall time and inner steps, and the evaluation
  curves of the learned optimizer beside the baseline, to a PNG."""

  run_dirs: flags.tyro().conf.Positional[tuple[Path, ...]]
  out: Path
  """The PNG to write (hyperparameter runs and searches: best so far against compute, and with
  --landscape the grid's heatmap with the runs' theta trajectories)."""
  landscape: Path | None = None
  """A grid written by 'meta-train search --method grid' (.npz), drawn under the runs' theta."""


@dataclasses.dataclass
class Search:
  """Random or grid search over a hyperparameter task's declared ranges (the baselines beside the
  estimators), compute counted as runs count it: inner steps of every trial."""

  task: config_lib.TaskConfig = dataclasses.field(default_factory=config_lib.TaskConfig)
  method: Literal["random", "grid"] = "random"
  """random: draw trials from the initial ranges; grid: a grid over one or two hyperparameters."""
  budget: int | None = None
  """Random search: inner steps to spend (e.g. an estimator run's total_unroll_steps)."""
  points: dict[str, int] = dataclasses.field(default_factory=dict)
  """Grid search: NAME COUNT pairs, e.g. --points lr 15 decay 15."""
  episodes: int = 1
  """Inner runs per trial or grid point."""
  seed: int = 0
  """Seed of the trials' draws and inner runs."""
  out: Path = Path("checkpoints/search")
  """Random search: a folder (config.json, metrics.jsonl); grid search: a .npz file."""
  overwrite: bool = False
  """Replace what is at --out."""


@dataclasses.dataclass
class Bench:
  """Run an optimizer on the held-out suite (tasks in no training distribution) beside Adam, AdamW
  and SGD with momentum, each tuned per task on a learning-rate grid. Prints a table and a JSON
  line; writes nothing unless --out is given."""

  optimizer: flags.tyro().conf.Positional[str]
  """An exported .npz, a pretrained name (lopt_meta.PRETRAINED), or an optax family by name (adam, adamw, sgdm; NAME:LR sets its learning rate)."""
  tasks: tuple[str, ...] = ()
  """Run these tasks of the suite only (default: all)."""
  steps_scale: float = 1.0
  """Run every task this many times its length."""
  out: Path | None = None
  """Write the loss curves to this PNG."""
  data_dir: str | None = None
  """Where FashionMNIST is (default: a prepared tfds dir or /usr/share/datasets/fashion-mnist)."""
  seeds: int = 1
  """Run the suite with seeds 0..K-1 (each its own initialization and data order; every baseline on the same ones); the summary gives each geometric mean's mean and spread over seeds."""
  results: Path | None = None
  """Write the whole result (every row, per seed and over seeds) to this .json file."""
  baselines: Path | None = None
  """A .json of tuned baselines per task, length and seed: read where it exists, written after tuning (benching several optimizers tunes once)."""


COMMANDS = {"train": Train, "resume": Resume, "eval": Eval, "export": Export, "plot": Plot,
            "search": Search, "bench": Bench}


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
  tyro = flags.tyro()
  return tyro.cli(kind, args=args, default=default, prog=f"meta-train {name}",
                  config=(tyro.conf.OmitArgPrefixes,))


def run_command(command) -> int:
  if isinstance(command, (Train, Resume)):
    # joins the other processes before any other JAX call
    from meta_train.command import distributed
    distributed.initialize(command.distributed)
    from meta_train.command import run as run_lib
    try:
      if isinstance(command, Train):
        run_lib.train(command.config, overwrite=command.overwrite)
      else:
        run_lib.resume(command.run_dir, outer_steps=command.outer_steps, wandb=command.wandb,
                       stop_grace_s=command.stop_grace_s)
    except (ConfigError, run_lib.Interrupted):  # every process stops the same way
      distributed.finish(finished=True)
      raise
    except BaseException:
      distributed.finish(finished=False)
      raise
    distributed.finish(finished=True)
  elif isinstance(command, Eval):
    _eval(command)
  elif isinstance(command, Export):
    _export(command)
  elif isinstance(command, Plot):
    _plot(command)
  elif isinstance(command, Search):
    _search(command)
  elif isinstance(command, Bench):
    _bench(command)
  return 0


def _bench(command: Bench) -> None:
  from meta_train.command import bench
  from tasks import heldout
  suite = heldout.suite(command.tasks or None, steps_scale=command.steps_scale)
  if command.out is not None and Path(command.out).suffix != ".png":
    raise ConfigError("out", f"the curves are written as a PNG; got {command.out}")
  if command.results is not None and Path(command.results).suffix != ".json":
    raise ConfigError("results", f"the result is written as a .json file; got {command.results}")
  check_positive_int("seeds", command.seeds)
  label, optimizer, arg = bench.resolve_optimizer(command.optimizer)

  def log(row):
    print(f"meta-train: {row['task']} (seed {row['seed']}): {row['train']:.4g} against tuned "
          f"Adam's {row['adam']['train']:.4g} ({row['seconds']:.0f} s)", file=sys.stderr,
          flush=True)
  if command.baselines is not None and Path(command.baselines).suffix != ".json":
    raise ConfigError("baselines", f"a .json file; got {command.baselines}")
  cache = bench.read_baselines(command.baselines)
  result = bench.run_bench(suite, optimizer, arg, label, seeds=command.seeds,
                           data_dir=command.data_dir, log=log, cache=cache)
  bench.write_baselines(command.baselines, cache)
  rows = result["rows"]
  print(bench.table(rows, label))
  print()
  print(bench.summary_table(result["per_seed"], label))
  if command.out is not None:
    first = [r for r in rows if r["seed"] == 0]
    print(f"meta-train: wrote {bench.plot(first, label, Path(command.out))}", file=sys.stderr)
  without_curves = [{k: v for k, v in r.items() if k != "curves"} for r in rows]
  if command.results is not None:
    path = Path(command.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**result, "rows": without_curves, "command": sys.argv[1:]},
                               indent=1) + "\n")
    print(f"meta-train: wrote {path}", file=sys.stderr)
  print(json.dumps({**result["summary"], "per_seed": result["per_seed"], "rows": without_curves}))


def _plot(command: Plot) -> None:
  from meta_train.command import hpo_plots
  from tasks.hpo import search
  from meta_train.command.plots import plot_runs
  runs = [d for d in command.run_dirs if not search.read_search(d)]
  hpo = command.landscape is not None or any(hpo_plots.is_hpo(d) for d in command.run_dirs)
  out = Path(command.out)
  if runs:
    print(f"meta-train: wrote {plot_runs(runs, out)}")
  if hpo:
    if runs:
      out = out.with_name(f"{out.stem}-hpo{out.suffix}")
    print(f"meta-train: wrote {hpo_plots.plot_hpo(command.run_dirs, out, command.landscape)}")


def _search(command: Search) -> None:
  import jax
  import numpy as np

  from tasks.hpo import search
  config = config_lib.TrainConfig(task=command.task)
  out = Path(command.out)
  if command.method == "random" and command.budget is None:
    raise ConfigError("budget", "random search needs --budget (inner steps to spend)")
  if command.method == "grid" and not command.points:
    raise ConfigError("points", "grid search needs --points NAME COUNT [NAME COUNT]")
  if command.method == "grid" and out.suffix != ".npz":
    raise ConfigError("out", f"grid search writes a .npz file; got {out}")
  if out.exists() and not command.overwrite:
    raise ConfigError("out", f"{out} exists; choose another --out or pass --overwrite")
  from meta_train.command import build as build_lib
  system = build_lib.build_system(config)
  key = jax.random.key(command.seed)
  if command.method == "random":
    result = search.random_search(system, budget=command.budget, key=key,
                                  episodes=command.episodes)
    search.write_random(result, out, task=config.to_dict()["task"], budget=command.budget,
                        episodes=command.episodes, seed=command.seed)
    print(f"meta-train: {len(result.objective)} trials, best {result.best_so_far[-1]:.6g} "
          f"({result.compute[-1]} inner steps) -> {out}")
  else:
    result = search.grid_search(system, points=command.points, key=key, episodes=command.episodes)
    search.write_grid(result, out)
    print(f"meta-train: grid {'x'.join(str(len(v)) for v in result.axes.values())}, best "
          f"{np.nanmin(result.objective):.6g} at {result.best_theta} -> {out}")


def _eval(command: Eval) -> None:
  from meta_train.command import evaluation
  from meta_train.command import run as run_lib
  if command.episodes is not None:
    check_positive_int("episodes", command.episodes)
  loaded = run_lib.load_run(command.run_dir, command.step)
  config = loaded.config
  if command.episodes is not None:
    config = dataclasses.replace(config, run=dataclasses.replace(
        config.run, eval_episodes=command.episodes))
  evaluator = evaluation.make_evaluator(config)  # builds the systems it evaluates on
  result = {"run_dir": str(command.run_dir), "step": loaded.step, **evaluator(loaded.theta),
            **evaluator.baseline()}
  line = f"{command.run_dir} at outer step {loaded.step}: eval_loss {result['eval_loss']:.6g}"
  if "adam_loss" in result:
    line += (f"; Adam lr {result['adam_lr']:g}: {result['adam_loss']:.6g} "
             f"(ratio {result['eval_vs_adam']:.3f})")
  elif "eval_vs_adam" in result:  # a task distribution: the geometric mean over its tasks
    line += f" ({result['eval_vs_adam']:.3f}x tuned Adam, geometric mean over the tasks)"
  print(line)
  print(json.dumps({k: v for k, v in result.items() if not k.endswith("_curve")}))


def _export(command: Export) -> None:
  """Reads the run and writes what it trained: the learned optimizer (built from its name and
  options alone) and theta, or tuned hyperparameters; no task, data or estimator is built."""
  import lopt_meta
  from meta_train.command import build as build_lib
  from meta_train.command import run as run_lib
  config = run_lib.read_config(command.run_dir)
  out = Path(command.out)
  if out.exists() and not command.overwrite:
    raise ConfigError("out", f"{out} exists; choose another --out or pass --overwrite")
  if not config.task.is_inner:
    _export_hyperparameters(command, config, out)
    return
  loaded = run_lib.load_run(command.run_dir, command.step)
  lopt = build_lib.build_lopt(config)
  lopt_meta.save_optimizer(out, lopt, loaded.theta, metadata={
      "run_dir": str(command.run_dir), "step": loaded.step, "task": config.task.task,
      "estimator": config.estimator.estimator})
  print(f"meta-train: wrote {out} ({lopt.name}, outer step {loaded.step}); load it with "
        f"lopt_meta.load_optimizer({str(out)!r})")


def _export_hyperparameters(command: Export, config, out: Path) -> None:
  """A hyperparameter run's tuned hyperparameters as JSON (constrained values and theta). The
  search space and the task's constants are read from the checkpoint; a run saved before they
  were recorded there (2026-12-07) has its task's system built for them."""
  from meta_train.command import run as run_lib
  from tasks import hpo as hyperparameters
  loaded = run_lib.load_run(command.run_dir, command.step)
  recorded = loaded.meta.get("hyperparameters")
  if recorded is not None:
    space = hyperparameters.space_from_dict(recorded["space"])
    constants = recorded["constants"]
  else:
    from meta_train.command import build as build_lib
    system = build_lib.build_system(config)
    space, constants = system.space, system.constants or {}
  if space is None:
    raise ConfigError("run_dir", f"{command.run_dir} trained theta of {config.task.task!r}, "
                      "neither a learned optimizer nor hyperparameters; nothing to export")
  if out.suffix != ".json":
    raise ConfigError("out", f"hyperparameters are written as JSON; got {out}")
  hyperparameters.to_json(space, loaded.theta, out, run_dir=str(command.run_dir),
                          step=loaded.step, task=config.task.task,
                          estimator=config.estimator.estimator, **constants)
  print(f"meta-train: wrote {out} (hyperparameters of outer step {loaded.step})")


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    if not argv or argv[0] not in COMMANDS:  # top-level help, or an unknown command
      tyro = flags.tyro()
      tyro.extras.subcommand_cli_from_dict(
          COMMANDS, prog="meta-train", args=argv, config=(tyro.conf.OmitArgPrefixes,),
          description="Meta-train learned optimizers and other unrolled systems with online ES.")
      return EXIT_USAGE
    return run_command(_parse(argv[0], argv[1:]))
  except (ConfigError, CheckpointError) as e:
    print(f"meta-train: error: {e}", file=sys.stderr)
    return EXIT_USAGE
  except Exception as e:
    from meta_train.command.run import Interrupted
    if isinstance(e, Interrupted):
      print(f"meta-train: {e}", file=sys.stderr)
      return e.code
    raise


if __name__ == "__main__":
  sys.exit(main())
