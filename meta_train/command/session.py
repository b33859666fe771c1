"""One session of a run: the loop that ``train`` and ``resume`` share, and what it owns.

A :class:`RunSession` owns, from its start to its end, the run's log (``metrics.jsonl`` and W&B),
its progress display, its watchdog, its checkpoints, the signal handlers and the counters (steps
done, elapsed time, trajectory steps). Its loop runs the compiled
:class:`~meta_train.engine.trainer.Trainer` in chunks that end at every log, evaluation and
checkpoint step::

    state = session.begin(state)             # a fresh run's burn-in, or the resume line
    while not session.finished:
      state = session.run_chunk(state)       # outer steps up to the next log/eval/checkpoint
      stopping = session.stopping()          # a signal to any process stops all at this step
      if session.log_due(stopping):
        session.log_window(state)            # metrics (and evaluation) of the steps since
      if session.checkpoint_due(stopping):
        session.save(state)
      if stopping:
        session.interrupt()                  # raises Interrupted (exit 130/143)

See :mod:`meta_train.command.run` for the folder, the lock and the exit codes.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from meta_train.command import build as build_lib
from meta_train.command import config as config_lib
from meta_train.command import distributed, evaluation, preflight, validation
from meta_train.command.checkpointing import Checkpoints
from meta_train.command.logs import RunLog
from meta_train.command.progress import Progress
from meta_train.command.watchdog import EXIT_CODES, Watchdog
from meta_train.engine.trainer import TrainState, summarize


class Interrupted(Exception):
  """A run stopped by SIGINT/SIGTERM after saving a checkpoint (``code``: 130 or 143)."""

  def __init__(self, code: int, step: int):
    super().__init__(f"stopped at outer step {step} (checkpoint saved)")
    self.code = code
    self.step = step


class RunSession:
  """The loop of one session of a run and everything it owns until it ends.

  Args:
    config: the run's validated configuration.
    run_dir: its folder (prepared, and locked by this process or process 0).
    system, estimator, trainer: what :func:`meta_train.command.run._build` made of ``config``.
    meta: the restored checkpoint's metadata (counters), ``{}`` for a fresh run.
    resumed: whether the session continues a run (the W&B run and the log say so).
  """

  def __init__(self, config, run_dir: Path, system, estimator, trainer, *, meta: dict[str, Any],
               resumed: bool):
    self.config, self.run_dir = config, run_dir
    self.system, self.estimator, self.trainer = system, estimator, trainer
    c_run = config.run
    self.total = config.outer.outer_steps
    self.evaluate = evaluation.make_evaluator(config, system) if c_run.eval_every else None
    self.lopt = build_lib.build_lopt(config) if config.task.is_inner else None
    self.validate = (validation.HeldOutValidator(self.lopt, data_dir=config.task.data_dir)
                     if c_run.heldout_every else None)
    self.heldout_best = float(meta.get("heldout_best", float("inf")))
    self.heldout_best_step = meta.get("heldout_best_step")
    self.writer = distributed.is_writer()
    self.log = (RunLog(run_dir, config.to_dict(), mode=c_run.wandb, name=run_dir.name,
                       resume=resumed) if self.writer else _NoLog())
    self.checkpoints = Checkpoints(run_dir, max_to_keep=c_run.keep_checkpoints)
    self.signal: int | None = None
    self._previous_handlers = self._catch_signals()
    self.start = time.perf_counter()
    self.elapsed0 = float(meta.get("elapsed_s", 0.0))
    self.total_unroll = int(meta.get("total_unroll_steps", 0))
    self.burn_in = int(meta.get("burn_in_steps", 0))
    self.progress: Progress | None = None
    self.done = 0
    self.now = self.start  # the end of the last chunk
    self._pending: list[dict[str, Any]] = []  # the per-step metrics of the log window's chunks
    self._window_start, self._window_time = 0, self.start
    self._compiled: set[int] = set()  # chunk lengths run before (a new length compiles)
    self.watchdog = Watchdog(self.write, grace_s=c_run.stop_grace_s,
                             stall_min_s=c_run.stall_warning_s)
    self.watchdog.start()

  # ---- The loop. ----

  def run(self, state: TrainState | None) -> TrainState:
    """The whole session: from ``state`` (``None``: a fresh run) to the configured total."""
    try:
      self.warn_lapack()
      state = self.begin(state)
      while not self.finished:
        state = self.run_chunk(state)
        stopping = self.stopping()
        if self.log_due(stopping):
          self.log_window(state)
        if self.checkpoint_due(stopping):
          self.save(state)
        if stopping:
          self.interrupt()
      return state
    finally:
      self.close()

  @property
  def finished(self) -> bool:
    return self.done >= self.total

  def write(self, line: str) -> None:
    """A warning line: above the progress bar on process 0; other processes print their own,
    marked with their index."""
    if self.progress is not None and self.writer:
      self.progress.write(line)
    else:
      prefix = "" if self.writer else f"[process {jax.process_index()}] "
      print(prefix + line, file=sys.stderr, flush=True)

  def warn_lapack(self) -> None:
    """Process 0 prints :func:`meta_train.command.preflight.lapack_warning`'s hazard, if any."""
    hazard = preflight.lapack_warning(self.system, self.estimator.num_pairs)
    if hazard is not None and self.writer:
      self.write(hazard)

  def begin(self, state: TrainState | None) -> TrainState:
    """A fresh run's workers (burned in; with evaluation on, its step-0 record), or a resumed
    run's line; then the progress display from the state's step."""
    if state is None:
      distributed.say(
          f"meta-train: {self.estimator!r} on {self.system.name!r}, {self.total} outer steps -> "
          f"{self.run_dir}" + (f" ({jax.process_count()} processes, {jax.device_count()} "
                               "devices)" if jax.process_count() > 1 else ""))
      state = self._start_workers()
    else:
      self.watchdog.last_checkpoint = int(state.step)
      self.log.event("resume", step=int(state.step))
      distributed.say(f"meta-train: resuming {self.run_dir} at outer step {int(state.step)} -> "
                      f"{self.total}")
    self.done = int(state.step)
    self.progress = (Progress(self.total, self.done) if self.writer else
                     Progress(self.total, self.done, stream=_DevNull(), bar=False))
    self._window_start, self._window_time = self.done, time.perf_counter()
    return state

  def run_chunk(self, state: TrainState) -> TrainState:
    """Outer steps up to the next log, evaluation or checkpoint step (or the total). The
    chunk's time goes to the watchdog unless its length is new (it compiled)."""
    c_run = self.config.run
    everies = ([c_run.log_every, c_run.checkpoint_every]
               + ([c_run.eval_every] if self.evaluate else [])
               + ([c_run.heldout_every] if self.validate else []))
    n = min([self.total] + [_next(self.done, every) for every in everies]) - self.done
    with self.watchdog.phase(f"running outer steps {self.done + 1}..{self.done + n}", steps=n):
      chunk_start = time.perf_counter()
      state, metrics = self.trainer.run(state, n)
      metrics = (distributed.to_host(metrics) if jax.process_count() > 1
                 else jax.device_get(metrics))
    if n in self._compiled:
      self.watchdog.completed(n, time.perf_counter() - chunk_start)
    self._compiled.add(n)
    self._pending.append(metrics)
    self.total_unroll += int(np.sum(metrics["unroll_steps"]))
    self.done += n
    self.now = time.perf_counter()
    return state

  def stopping(self) -> bool:
    """Whether a signal asked to stop (any process's, with several: all stop at this step)."""
    stopping = self.signal is not None
    if jax.process_count() > 1:
      stopping = distributed.any_process(stopping)
    return stopping

  def evaluating(self) -> bool:
    return self.evaluate is not None and (self.done % self.config.run.eval_every == 0
                                          or self.finished)

  def validating(self) -> bool:
    return self.validate is not None and (self.done % self.config.run.heldout_every == 0
                                          or self.finished)

  def log_due(self, stopping: bool) -> bool:
    return (self.done % self.config.run.log_every == 0 or self.finished or self.evaluating()
            or self.validating() or stopping)

  def checkpoint_due(self, stopping: bool) -> bool:
    return self.done % self.config.run.checkpoint_every == 0 or self.finished or stopping

  def log_window(self, state: TrainState) -> None:
    """One record for the log window's chunks: their metrics reduced together, the rates over
    the window's time, theta's evaluation when one is due; then the log and the progress line.
    Evaluation time is not counted as training time."""
    record = summarize({k: np.concatenate([np.atleast_1d(m[k]) for m in self._pending])
                        for k in self._pending[0]})
    window_s = self.now - self._window_time
    record.update(step=self.done, time_s=self.elapsed0 + self.now - self.start,
                  outer_steps_per_s=(self.done - self._window_start) / window_s,
                  unroll_steps_per_s=record["unroll_steps"] / window_s,
                  total_unroll_steps=self.total_unroll)
    _add_theta(record, _local(state.theta))
    record["burn_in_steps"] = self.burn_in
    if self.evaluating():
      with self.watchdog.phase(f"evaluating theta at step {self.done}"):
        record.update(self.evaluate(_local(state.theta)))
      self.progress.note(self.done, eval_line(self.done, record))
    if self.validating():
      self._meta_validate(record, _local(state.theta))
      self.progress.note(self.done, heldout_line(self.done, record))
    if self.writer and (record["nonfinite"] or record["skipped_updates"]):
      self.progress.write(f"meta-train: steps {self._window_start + 1}..{self.done}: masked "
                          f"{record['nonfinite']} non-finite losses, skipped "
                          f"{record['skipped_updates']} non-finite updates")
    with self.watchdog.writing():
      self.log.write(record)
    self.progress.update(self.done, record)
    self._pending, self._window_start = [], self.done
    self._window_time = time.perf_counter()

  def save(self, state: TrainState) -> None:
    """Saves checkpoint ``done`` with the counters (every process takes part), and tells the
    watchdog and the failure hint that it is complete."""
    meta = {"step": self.done, "elapsed_s": self.elapsed0 + self.now - self.start,
            "total_unroll_steps": self.total_unroll, "burn_in_steps": self.burn_in,
            "num_processes": jax.process_count(), "config": self.config.to_dict(),
            "heldout_best": self.heldout_best, "heldout_best_step": self.heldout_best_step}
    if self.system.space is not None:  # what `meta-train export` reads without the task
      from tasks import hpo
      meta["hyperparameters"] = {"space": hpo.space_to_dict(self.system.space),
                                 "constants": self.system.constants or {}}
    with self.watchdog.phase(f"saving checkpoint {self.done}"), self.watchdog.writing():
      self.checkpoints.save(self.done, state, meta)
    self.watchdog.last_checkpoint = self.done
    distributed.set_hint(f"the last complete checkpoint is step {self.done}; continue with "
                         f"'meta-train resume {self.run_dir}' on {jax.process_count()} processes")

  def interrupt(self) -> None:
    """Logs the stop and raises :class:`Interrupted` with the signal's exit code."""
    with self.watchdog.writing():
      self.log.event("interrupted", step=self.done, signal=int(self.signal))
    raise Interrupted(EXIT_CODES[self.signal or signal.SIGTERM], self.done)

  def close(self) -> None:
    """Closes the progress display, checkpoints and log, stops the watchdog, and restores the
    signal handlers."""
    with self.watchdog.phase("closing the run (logs, checkpoints)"):
      if self.progress is not None:
        self.progress.close()
      self.checkpoints.close()
      self.log.close()
    self.watchdog.stop()
    for signum, handler in self._previous_handlers.items():
      signal.signal(signum, handler)

  # ---- Helpers. ----

  def _catch_signals(self) -> dict[int, Any]:
    """Handlers for SIGINT and SIGTERM that record the first signal in ``self.signal`` (the loop
    stops at its next check; a second signal is the watchdog's); returns the previous ones.
    Outside the main thread nothing is installed."""
    def on_signal(signum, frame):
      del frame
      if self.signal is None:
        self.signal = signum

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
      try:
        previous[signum] = signal.signal(signum, on_signal)
      except ValueError:  # not the main thread: no signal handling
        pass
    return previous

  def _start_workers(self) -> TrainState:
    """A fresh run's workers (burned in) and, with evaluation on, its step-0 record."""
    with self.watchdog.phase("initializing the workers (compilation and burn-in)"):
      state = self.trainer.init(jax.random.key(self.config.run.seed), self.system.theta0)
      self.burn_in = self.estimator.burn_in_steps(state.workers)
    self.total_unroll = self.burn_in
    if self.evaluate is not None or self.validate is not None:
      record = {"step": 0, "time_s": time.perf_counter() - self.start,
                "total_unroll_steps": self.burn_in, "burn_in_steps": self.burn_in}
      if self.evaluate is not None:
        with self.watchdog.phase("evaluating theta at step 0"):
          record.update(**self.evaluate(_local(state.theta)), **self.evaluate.baseline())
        distributed.say(eval_line(0, record))
      if self.validate is not None:
        self._meta_validate(record, _local(state.theta))
        distributed.say(heldout_line(0, record))
      _add_theta(record, _local(state.theta))
      with self.watchdog.writing():
        self.log.write(record)
    return state

  def _meta_validate(self, record: dict[str, Any], theta) -> None:
    """Adds meta-validation (:mod:`meta_train.command.validation`) to ``record``; a new best
    ``eval_heldout`` replaces ``RUN/best.npz`` (process 0 writes it)."""
    with self.watchdog.phase(f"meta-validating theta at step {self.done}"):
      record.update(self.validate(theta))
      if self.done == 0:
        record.update(self.validate.baseline())
    score = record["eval_heldout"]
    if np.isfinite(score) and score < self.heldout_best:
      self.heldout_best, self.heldout_best_step = float(score), self.done
      if self.writer:
        from lopt_meta.export import save_optimizer
        with self.watchdog.writing():
          save_optimizer(self.run_dir / validation.BEST_FILE, self.lopt, theta, metadata={
              "step": self.done, "eval_heldout": score,
              "eval_heldout_tasks": {k.split("/", 1)[1]: v for k, v in record.items()
                                     if k.startswith("eval_heldout/")}})
    record["heldout_best"] = self.heldout_best
    record["heldout_best_step"] = self.heldout_best_step


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


def heldout_line(step: int, record: dict[str, Any]) -> str:
  """The console line of a meta-validation record."""
  return (f"step {step}: eval_heldout {record['eval_heldout']:.4g}x tuned Adam (best "
          f"{record['heldout_best']:.4g} at step {record['heldout_best_step']})")


def eval_line(step: int | None, record: dict[str, Any]) -> str:
  """The console line of an evaluation record (``step None``: without the step)."""
  line = f"eval_loss {record['eval_loss']:.6g}"
  if "eval_return" in record:
    line += f" (return {record['eval_return']:.6g})"
  if "adam_loss" in record:
    line += f" (Adam lr {record['adam_lr']:g}: {record['adam_loss']:.6g})"
  elif "eval_vs_adam" in record:
    line += f" ({record['eval_vs_adam']:.3f}x Adam)"
  return line if step is None else f"step {step}: {line}"
