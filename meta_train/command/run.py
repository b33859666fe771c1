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
trains.

The loop runs the compiled :class:`~meta_train.engine.trainer.Trainer` in chunks that end at every log,
evaluation and checkpoint step. SIGINT and SIGTERM are caught: the current chunk finishes, a
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
import signal
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lopt_meta.errors import ConfigError
from meta_train.command import config as config_lib
from meta_train.command import distributed, evaluation, preflight
from meta_train.command.checkpointing import Checkpoints
from meta_train.command.logs import RunLog, read_metrics
from meta_train.command.progress import Progress
from meta_train.command.run_lock import LOCK_FILE, RunLock
from meta_train.engine.trainer import Trainer, TrainState, outer_optimizer, summarize
from meta_train.command.watchdog import EXIT_CODES, Watchdog

RUN_FILES = ("config.json", "metrics.jsonl", "checkpoints", "unreadable_checkpoints", "wandb",
             "wandb_id")


class Interrupted(Exception):
  """The run stopped on a signal after saving a checkpoint; ``code`` is the exit status."""

  def __init__(self, code: int, step: int):
    super().__init__(f"stopped at outer step {step} (checkpoint saved)")
    self.code, self.step = code, step


@dataclasses.dataclass
class LoadedRun:
  """A run read back from its folder (see :func:`load_run`)."""
  run_dir: Path
  config: config_lib.TrainConfig
  state: TrainState
  step: int
  meta: dict[str, Any]
  system: Any  # the validated UnrolledSystem the run trains

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
  path = Path(run_dir) / "config.json"
  if not path.is_file():
    raise ConfigError("run_dir", f"{run_dir} is not a run folder (no config.json)")
  try:
    return config_lib.TrainConfig.from_dict(json.loads(path.read_text()))
  except (json.JSONDecodeError, TypeError) as e:
    raise ConfigError("run_dir", f"{path} is not a readable run configuration ({e})") from None


def _build(config: config_lib.TrainConfig):
  system, estimator = config_lib.validate(config)
  trainer = Trainer(estimator, outer_optimizer(config.outer.outer_optimizer, config.outer.outer_lr,
                                               config.outer.grad_clip))
  return system, estimator, trainer


def _abstract_state(trainer: Trainer, system) -> TrainState:
  return jax.eval_shape(trainer.init, jax.random.key(0), system.theta0)


def _state_shardings(like: TrainState, estimator):
  """Where each array of the state lives when the run spans processes: the workers' pairs axis
  split over the estimator's mesh, everything else (theta, optimizer state, key, and a task
  distribution's per-task counters) replicated."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  from meta_train.engine import sharding
  from meta_train.engine.estimators import OverTasksState
  members = getattr(estimator, "members", None)
  mesh = getattr(next(iter(members.values())) if members else estimator, "mesh", None)
  if mesh is None:
    mesh = Mesh(np.asarray(jax.devices()), (sharding.AXIS,))
  replicated = NamedSharding(mesh, PartitionSpec())
  split = NamedSharding(mesh, sharding.SHARDED)
  out = jax.tree.map(lambda _: replicated, like)

  def workers(tree):
    return jax.tree.map(lambda x: split if x.ndim else replicated, tree)
  if isinstance(like.workers, OverTasksState):
    return out.replace(workers=out.workers.replace(
        members=tuple(workers(w) for w in like.workers.members)))
  return out.replace(workers=workers(like.workers))


def load_run(run_dir: str | os.PathLike, step: int | None = None) -> LoadedRun:
  """The run in ``run_dir`` at its latest readable checkpoint (or at ``step``).

  Returns:
    a :class:`LoadedRun` with ``.theta``, ``.step``, ``.config``, ``.state`` (the whole
    TrainState), ``.meta``, ``.system`` and ``.metrics``.

  Raises:
    ConfigError: not a run folder, or no readable checkpoint.
  """
  run_dir = Path(run_dir)
  config = read_config(run_dir)
  system, _, trainer = _build(config)
  checkpoints = Checkpoints(run_dir, read_only=True)
  try:
    state, meta, restored = checkpoints.restore(_abstract_state(trainer, system), step)
  finally:
    checkpoints.close()
  return LoadedRun(run_dir=run_dir, config=config, state=state, step=restored, meta=meta,
                   system=system)


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
  system, estimator, trainer = _build(config)
  distributed.check_same(config.to_dict())
  run_dir = config.run_dir()
  if run_dir.exists() and not run_dir.is_dir():
    raise ConfigError("out", f"{run_dir} exists and is not a folder")
  lock = RunLock(run_dir)
  distributed.on_process_0(lambda: _claim(lock, "out", prepare_run_dir, config, overwrite),
                           "the run folder check")
  try:
    return _loop(config, run_dir, system, estimator, trainer, None, meta={}, resumed=False)
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
  system, estimator, trainer = _build(config)
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
  return _loop(config, run_dir, system, estimator, trainer, state, meta=meta, resumed=True)


def _loop(config, run_dir, system, estimator, trainer, state, *, meta, resumed):
  c_run, total = config.run, config.outer.outer_steps
  evaluate = evaluation.make_evaluator(config, system) if c_run.eval_every else None
  writer = distributed.is_writer()
  log = (RunLog(run_dir, config.to_dict(), mode=c_run.wandb, name=run_dir.name, resume=resumed)
         if writer else _NoLog())
  checkpoints = Checkpoints(run_dir, max_to_keep=c_run.keep_checkpoints)
  stop = {"signal": None}
  previous = _catch_signals(stop)
  start = time.perf_counter()
  elapsed0 = float(meta.get("elapsed_s", 0.0))
  total_unroll = int(meta.get("total_unroll_steps", 0))
  burn_in = int(meta.get("burn_in_steps", 0))
  progress = None

  def write(line):
    if progress is not None and writer:
      progress.write(line)
    else:  # other processes print their own warnings, marked
      prefix = "" if writer else f"[process {jax.process_index()}] "
      print(prefix + line, file=sys.stderr, flush=True)

  watchdog = Watchdog(write, grace_s=c_run.stop_grace_s, stall_min_s=c_run.stall_warning_s)
  watchdog.start()
  try:
    hazard = preflight.lapack_warning(system, getattr(estimator, "num_pairs",
                                                      estimator.num_particles))
    if hazard is not None and writer:
      write(hazard)
    if state is None:
      distributed.say(f"meta-train: {estimator!r} on {system.name!r}, {total} outer steps -> "
                      f"{run_dir}" + (f" ({jax.process_count()} processes, {jax.device_count()} "
                                      "devices)" if jax.process_count() > 1 else ""))
      state, burn_in = _start(system, estimator, trainer, c_run.seed, evaluate, log,
                              watchdog, start)
      total_unroll = burn_in
    else:
      _say_resume(run_dir, state, total, log, watchdog)
    done = int(state.step)
    progress = Progress(total, done) if writer else Progress(total, done, stream=_DevNull(),
                                                             bar=False)
    pending, window_start, window_time = [], done, time.perf_counter()
    compiled = set()  # chunk lengths run before (a new length compiles: its time is not counted)
    while done < total:
      everies = [c_run.log_every, c_run.checkpoint_every] + ([c_run.eval_every] if evaluate else [])
      n = min([total] + [_next(done, every) for every in everies]) - done
      state, metrics = _run_chunk(trainer, state, done, n, watchdog, compiled)
      pending.append(metrics)
      total_unroll += int(np.sum(pending[-1]["unroll_steps"]))
      done += n
      now = time.perf_counter()
      stopping = stop["signal"] is not None
      if jax.process_count() > 1:  # a signal to any process stops all at this step
        stopping = distributed.any_process(stopping)
      evaluating = evaluate is not None and (done % c_run.eval_every == 0 or done == total)
      if done % c_run.log_every == 0 or done == total or evaluating or stopping:
        record = _window_record(pending, done=done, window_start=window_start,
                                window_s=now - window_time, time_s=elapsed0 + now - start,
                                total_unroll=total_unroll, theta=state.theta)
        record["burn_in_steps"] = burn_in
        _report(record, first=window_start + 1, done=done, theta=state.theta,
                evaluate=evaluate if evaluating else None, watchdog=watchdog, progress=progress,
                log=log, writer=writer)
        pending, window_start = [], done
        window_time = time.perf_counter()  # evaluation time is not counted as training time
      if done % c_run.checkpoint_every == 0 or done == total or stopping:
        _save(checkpoints, watchdog, run_dir, state, {
            "step": done, "elapsed_s": elapsed0 + now - start, "total_unroll_steps": total_unroll,
            "burn_in_steps": burn_in, "num_processes": jax.process_count(),
            "config": config.to_dict()})
      if stopping:
        with watchdog.writing():
          log.event("interrupted", step=done, signal=int(stop["signal"]))
        raise Interrupted(EXIT_CODES[stop["signal"] or signal.SIGTERM], done)
    return state, run_dir
  finally:
    _close(progress, checkpoints, log, watchdog, previous)


def _catch_signals(stop: dict[str, Any]) -> dict[int, Any]:
  """Handlers for SIGINT and SIGTERM that record the first signal in ``stop["signal"]`` (the
  loop stops at its next check; a second signal is the watchdog's); returns the previous ones.
  Outside the main thread nothing is installed."""
  def on_signal(signum, frame):
    del frame
    if stop["signal"] is None:
      stop["signal"] = signum

  previous = {}
  for signum in (signal.SIGINT, signal.SIGTERM):
    try:
      previous[signum] = signal.signal(signum, on_signal)
    except ValueError:  # not the main thread: no signal handling
      pass
  return previous


def _report(record, *, first, done, theta, evaluate, watchdog, progress, log, writer) -> None:
  """Evaluates ``theta`` into ``record`` (when ``evaluate`` is given), warns about masked steps,
  and writes the record to the log and the progress bar."""
  if evaluate is not None:
    with watchdog.phase(f"evaluating theta at step {done}"):
      record.update(evaluate(_local(theta)))
    progress.note(done, _eval_line(done, record))
  if writer and (record["nonfinite"] or record["skipped_updates"]):
    progress.write(f"meta-train: steps {first}..{done}: masked "
                   f"{record['nonfinite']} non-finite losses, skipped "
                   f"{record['skipped_updates']} non-finite updates")
  with watchdog.writing():
    log.write(record)
  progress.update(done, record)


def _close(progress, checkpoints, log, watchdog, previous_handlers) -> None:
  """Closes the progress bar, checkpoints and logs, stops the watchdog, restores the signals."""
  with watchdog.phase("closing the run (logs, checkpoints)"):
    if progress is not None:
      progress.close()
    checkpoints.close()
    log.close()
  watchdog.stop()
  for signum, handler in previous_handlers.items():
    signal.signal(signum, handler)


def _say_resume(run_dir, state, total, log, watchdog) -> None:
  """A resumed run: the watchdog's last checkpoint, the log's event and the console line."""
  watchdog.last_checkpoint = int(state.step)
  log.event("resume", step=int(state.step))
  distributed.say(f"meta-train: resuming {run_dir} at outer step {int(state.step)} -> {total}")


def _save(checkpoints, watchdog, run_dir, state, meta: dict) -> None:
  """Saves checkpoint ``meta["step"]`` (every process takes part) and tells the watchdog and the
  failure hint that it is complete."""
  done = meta["step"]
  with watchdog.phase(f"saving checkpoint {done}"), watchdog.writing():
    checkpoints.save(done, state, meta)
  watchdog.last_checkpoint = done
  distributed.set_hint(f"the last complete checkpoint is step {done}; continue with "
                       f"'meta-train resume {run_dir}' on {jax.process_count()} processes")


def _run_chunk(trainer, state, done, n, watchdog, compiled):
  """Outer steps ``done + 1 .. done + n``; returns the state and the metrics on the host. The
  chunk's time goes to the watchdog unless its length is new (``compiled``), i.e. compiled."""
  with watchdog.phase(f"running outer steps {done + 1}..{done + n}", steps=n):
    chunk_start = time.perf_counter()
    state, metrics = trainer.run(state, n)
    metrics = distributed.to_host(metrics) if jax.process_count() > 1 else jax.device_get(metrics)
  if n in compiled:
    watchdog.completed(n, time.perf_counter() - chunk_start)
  compiled.add(n)
  return state, metrics


def _start(system, estimator, trainer, seed, evaluate, log, watchdog, start):
  """A fresh run's workers (burned in) and, with evaluation on, its step-0 record; returns
  ``(state, burn-in trajectory steps)``."""
  with watchdog.phase("initializing the workers (compilation and burn-in)"):
    state = trainer.init(jax.random.key(seed), system.theta0)
    burn_in = estimator.burn_in_steps(state.workers)
  if evaluate is not None:
    with watchdog.phase("evaluating theta at step 0"):
      record = {"step": 0, "time_s": time.perf_counter() - start, "total_unroll_steps": burn_in,
                "burn_in_steps": burn_in, **evaluate(_local(state.theta)), **evaluate.baseline()}
    _add_theta(record, _local(state.theta))
    with watchdog.writing():
      log.write(record)
    distributed.say(_eval_line(0, record))
  return state, burn_in


def _window_record(pending, *, done, window_start, window_s, time_s, total_unroll, theta):
  """One record per log window: the per-step metrics of all its chunks reduced together, with
  the rates over the window's ``window_s`` seconds."""
  record = summarize({k: np.concatenate([np.atleast_1d(m[k]) for m in pending])
                      for k in pending[0]})
  record.update(step=done, time_s=time_s, outer_steps_per_s=(done - window_start) / window_s,
                unroll_steps_per_s=record["unroll_steps"] / window_s,
                total_unroll_steps=total_unroll)
  _add_theta(record, _local(theta))
  return record


def _local(tree):
  """``tree`` readable by this process alone (a copy on the host when the run spans processes;
  theta is replicated, so every process holds all of it)."""
  return distributed.to_host(tree) if jax.process_count() > 1 else tree


class _NoLog:
  """The run log of a process other than 0: writes nothing."""

  def write(self, record):
    del record

  def event(self, name, **fields):
    del name, fields

  def close(self):
    pass


class _DevNull:
  """A stream that drops what is written (the progress display of processes other than 0)."""

  def write(self, text):
    return len(text)

  def flush(self):
    pass

  def isatty(self):
    return False


def _add_theta(record: dict[str, Any], theta) -> None:
  """Logs theta itself when it is small (at most 32 numbers)."""
  if sum(np.size(x) for x in jax.tree.leaves(theta)) <= 32:
    record["theta"] = _jsonable(theta)


def _next(done: int, every: int) -> int:
  return (done // every + 1) * every


def _jsonable(x):
  leaves = jax.tree.leaves(x)
  if len(leaves) == 1 and not isinstance(x, dict):
    x = np.asarray(leaves[0])
    return x.item() if x.ndim == 0 else x.tolist()
  return jax.tree.map(lambda v: np.asarray(v).tolist(), x)


def _eval_line(step: int | None, record: dict[str, Any]) -> str:
  line = f"eval_loss {record['eval_loss']:.6g}"
  if "eval_return" in record:
    line += f" (return {record['eval_return']:.6g})"
  if "adam_loss" in record:
    line += f" (Adam lr {record['adam_lr']:g}: {record['adam_loss']:.6g})"
  elif "eval_vs_adam" in record:
    line += f" ({record['eval_vs_adam']:.3f}x Adam)"
  return line if step is None else f"step {step}: {line}"
