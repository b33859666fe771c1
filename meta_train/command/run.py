"""A meta-training run in its folder: train, resume, load.

``RUN_DIR`` holds ``config.json`` (the validated configuration), ``metrics.jsonl``,
``checkpoints/<step>/`` (Orbax; see :mod:`meta_train.command.checkpointing`), ``run.lock`` and, unless
W&B is disabled, ``wandb/``. :func:`train` starts a run (refusing a folder that already holds one,
finished, stopped or live, unless ``overwrite``, which deletes the old run's files but never a
live run's); :func:`resume` continues the latest readable checkpoint of a folder to a new total
of outer steps, exactly as if the run had never stopped; :func:`load_run` reads a run back.

One process writes a run folder: ``train`` and ``resume`` hold its lock
(:class:`~meta_train.command.run_lock.RunLock`, process 0's with several processes) from before they
touch the folder until they end, and a second writer is refused, naming the holder, before any
compute. Readers (:func:`load_run` and the commands built on it) take no lock and write nothing:
they open the checkpoints read-only, so a run can be evaluated, exported and plotted while it
trains. Reading builds nothing of the writer's: no task, no data, no estimator, no trainer, no
device mesh; the run's ``config.json`` is parsed, and the checkpoint is restored as it records
itself (:class:`SavedState`).

The loop (:class:`~meta_train.command.session.RunSession`) runs the compiled
:class:`~meta_train.engine.trainer.Trainer` in chunks that end at every log, evaluation and
checkpoint step. SIGINT and SIGTERM are caught: the current chunk finishes, a
checkpoint is saved, and the process exits with 130 or 143. A :class:`~meta_train.command.watchdog.
Watchdog` covers what the loop cannot see while it waits for compiled code: a second signal, or a
phase still running ``stop_grace_s`` after the signal (a compiled step that never returns), ends
the process at once with the same status, without saving and never in the middle of a write; and
a chunk of outer steps that runs far longer than the recent ones prints a warning.

Several processes (:mod:`meta_train.command.distributed`) run the same loop: process 0 alone prepares the
folder and writes ``config.json``, ``metrics.jsonl``, the progress display and W&B; all of them
save and restore the checkpoints, which record the number of processes (a run resumes with the
same number, or stops with one error before compute). They agree at every chunk's end whether
to stop, so that a signal to any of them stops all of them at the same outer step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from lopt_meta.errors import ConfigError
from meta_train.command import build as build_lib
from meta_train.command import config as config_lib
from meta_train.command import distributed
from meta_train.command.checkpointing import Checkpoints
from meta_train.command.logs import read_metrics
from meta_train.command.run_lock import LOCK_FILE, RunLock
from meta_train.command.session import Interrupted, RunSession  # noqa: F401  (the run's error)
from meta_train.engine.trainer import Trainer, TrainState

RUN_FILES = ("config.json", "metrics.jsonl", "checkpoints", "unreadable_checkpoints", "wandb",
             "wandb_id")


class SavedState(NamedTuple):
  """A checkpoint's :class:`~meta_train.engine.trainer.TrainState` as the checkpoint records it:
  the same fields, each in the containers it was saved with (dicts and lists), PRNG keys as their
  ``uint32`` data."""
  step: Any
  theta: Any
  opt_state: Any
  workers: Any
  key: Any


@dataclasses.dataclass(frozen=True)
class LoadedRun:
  """A run read back from its folder (see :func:`load_run`)."""
  run_dir: Path
  config: config_lib.TrainConfig  # parsed from config.json, not checked or built
  state: SavedState
  step: int
  meta: dict[str, Any]

  @property
  def theta(self):
    return self.state.theta

  @property
  def metrics(self) -> list[dict[str, Any]]:
    return read_metrics(self.run_dir)


def _write_json(path: Path, data: dict[str, Any]) -> None:
  tmp = path.with_name(path.name + ".partial")
  tmp.write_text(json.dumps(data, indent=2) + "\n")
  os.replace(tmp, path)


def read_config(run_dir: Path) -> config_lib.TrainConfig:
  """The configuration a run folder was trained with (its ``config.json``), parsed only.

  Raises:
    ConfigError(run_dir): not a run folder, or an unreadable ``config.json``.
  """
  path = Path(run_dir) / "config.json"
  if not path.is_file():
    raise ConfigError("run_dir", f"{run_dir} is not a run folder (no config.json)")
  try:
    return config_lib.TrainConfig.from_dict(json.loads(path.read_text()))
  except (json.JSONDecodeError, TypeError) as e:
    raise ConfigError("run_dir", f"{path} is not a readable run configuration ({e})") from None


def _abstract_state(trainer: Trainer, system) -> TrainState:
  return jax.eval_shape(trainer.init, jax.random.key(0), system.theta0)


def _state_shardings(like: TrainState, estimator):
  """Where each array of the state lives when the run spans processes: the workers' pairs axis
  split over the estimator's mesh, everything else (theta, optimizer state, key, and a task
  distribution's per-task counters) replicated."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  from meta_train.engine import sharding
  mesh = estimator.mesh
  if mesh is None:
    mesh = Mesh(np.asarray(jax.devices()), (sharding.AXIS,))
  replicated = NamedSharding(mesh, PartitionSpec())
  split = NamedSharding(mesh, sharding.SHARDED)
  out = jax.tree.map(lambda _: replicated, like)
  return out.replace(workers=estimator.worker_shardings(like.workers, split, replicated))


def load_run(run_dir: str | os.PathLike, step: int | None = None) -> LoadedRun:
  """The run in ``run_dir`` at its latest readable checkpoint (or at ``step``): its parsed
  configuration and the checkpoint as it records itself. Nothing is built (no task, no data, no
  estimator) and nothing is written.

  Returns:
    a :class:`LoadedRun` with ``.theta``, ``.step``, ``.config``, ``.state`` (a
    :class:`SavedState`), ``.meta`` and ``.metrics``.

  Raises:
    ConfigError: not a run folder. CheckpointError: no readable checkpoint.
  """
  run_dir = Path(run_dir)
  config = read_config(run_dir)
  checkpoints = Checkpoints(run_dir, read_only=True)
  try:
    saved, meta, restored = checkpoints.restore(step=step)
  finally:
    checkpoints.close()
  state = SavedState(**{field: saved.get(field) for field in SavedState._fields})
  return LoadedRun(run_dir=run_dir, config=config, state=state, step=restored, meta=meta)


def prepare_run_dir(config: config_lib.TrainConfig, overwrite: bool = False) -> Path:
  """Creates the run folder; one that already holds a run is refused unless ``overwrite``
  (which deletes that run's files, :data:`RUN_FILES`, and nothing else). The caller holds the
  folder's lock."""
  run_dir = config.run_dir()
  if run_dir.exists() and not run_dir.is_dir():
    raise ConfigError("out", f"{run_dir} exists and is not a folder")
  if run_dir.exists() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
    if not overwrite:
      what = "a run"
      if (run_dir / "config.json").is_file():
        try:
          same = json.loads((run_dir / "config.json").read_text()) == config.to_dict()
          what = "this run" if same else "a different run"
        except json.JSONDecodeError:
          pass
      raise ConfigError("out", f"run folder {run_dir} already holds {what}; resume it with "
                        f"'meta-train resume {run_dir}', choose another --out, or pass --overwrite")
    for name in RUN_FILES:
      target = run_dir / name
      if target.is_dir():
        shutil.rmtree(target)
      elif target.exists():
        target.unlink()
  run_dir.mkdir(parents=True, exist_ok=True)
  _write_json(run_dir / "config.json", config.to_dict())
  return run_dir


def train(config: config_lib.TrainConfig, *, overwrite: bool = False) -> tuple[TrainState, Path]:
  """Starts a run: everything is validated (and the folder checked) before any compute.

  Returns:
    ``(final_state, run_dir)``.

  Raises:
    ConfigError: bad configuration or an occupied run folder.
    Interrupted: stopped by a signal (a checkpoint was saved).
  """
  system, estimator, trainer = build_lib.build_run(config)
  distributed.check_same(config.to_dict())
  run_dir = config.run_dir()
  if run_dir.exists() and not run_dir.is_dir():
    raise ConfigError("out", f"{run_dir} exists and is not a folder")
  lock = RunLock(run_dir)
  distributed.on_process_0(lambda: _claim(lock, "out", prepare_run_dir, config, overwrite),
                           "the run folder check")
  try:
    session = RunSession(config, run_dir, system, estimator, trainer, meta={}, resumed=False)
    return session.run(None), run_dir
  finally:
    lock.release()


def _claim(lock: RunLock, field: str, then, *args):
  """Takes ``lock`` (``field`` names the folder in the error), then runs ``then(*args)``; the
  lock is released again if that fails."""
  lock.acquire(field=field)
  try:
    return then(*args)
  except BaseException:
    lock.release()
    raise


def resume(run_dir: str | os.PathLike, *, outer_steps: int | None = None,
           wandb: str | None = None, stop_grace_s: float | None = None) -> tuple[TrainState, Path]:
  """Continues the run in ``run_dir`` from its latest readable checkpoint to ``outer_steps`` in
  total (default: the configured number); ``wandb`` and ``stop_grace_s`` replace the run's."""
  run_dir = Path(run_dir)
  config = read_config(run_dir)
  outer = config.outer if outer_steps is None else dataclasses.replace(
      config.outer, outer_steps=outer_steps)
  run = config.run if wandb is None else dataclasses.replace(config.run, wandb=wandb)
  if stop_grace_s is not None:
    run = dataclasses.replace(run, stop_grace_s=stop_grace_s)
  config = dataclasses.replace(config, outer=outer, run=dataclasses.replace(run, out=run_dir))
  system, estimator, trainer = build_lib.build_run(config)
  distributed.check_same(config.to_dict())
  lock = RunLock(run_dir)
  distributed.on_process_0(lambda: lock.acquire(field="run_dir"), "the run folder's lock")
  try:
    return _resume_locked(config, run_dir, system, estimator, trainer)
  finally:
    lock.release()


def _resume_locked(config, run_dir, system, estimator, trainer):
  """:func:`resume` once the folder's lock is held: restore, set aside what cannot be read,
  and run the loop."""
  like = _abstract_state(trainer, system)
  several = jax.process_count() > 1
  checkpoints = Checkpoints(run_dir)
  try:
    state, meta, step = checkpoints.restore(
        like, shardings=_state_shardings(like, estimator) if several else None)
    saved_by = int(meta.get("num_processes", 1))
    if saved_by != jax.process_count():
      raise ConfigError("num_processes", f"checkpoint {step} of {run_dir} was saved by {saved_by} "
                        f"process(es); resume it with --num-processes {saved_by} (this session "
                        f"has {jax.process_count()})")
    if step < config.outer.outer_steps:
      distributed.on_process_0(
          lambda: checkpoints.set_aside([s for s in checkpoints.unreadable if s > step]),
          "setting aside unreadable checkpoints")
  finally:
    checkpoints.close()
  if step >= config.outer.outer_steps:
    distributed.say(f"meta-train: {run_dir} is already at outer step {step} (asked for "
                    f"{config.outer.outer_steps}); nothing to do")
    return state, run_dir
  if distributed.is_writer():
    _write_json(run_dir / "config.json", config.to_dict())
  session = RunSession(config, run_dir, system, estimator, trainer, meta=meta, resumed=True)
  return session.run(state), run_dir
