"""Readers never disturb a run, and a run folder has one writer.

* A run checkpointing every outer step, read continuously from another process through
  ``load_run``, ``meta-train eval``, ``export`` and ``plot``, finishes with exit 0 and the same
  state, bit for bit, as the same run undisturbed; the readers write nothing near a run (not
  even cleaning the temporary folder of a save in progress).
* A second ``train --out`` (with or without ``--overwrite``) or ``resume`` of a live run is
  refused with one line naming the holder; a lock left by a process killed with ``kill -9`` does
  not block ``resume``.

The quick tier (``-m "not slow"``) keeps the readers on a finished run (``load_run``, ``eval``,
``export`` and ``plot`` write nothing, not even near a save in progress) and the one-writer rule;
the ``slow`` test adds the live run read continuously while it trains, compared bit for bit with
the undisturbed one.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from meta_train.command import cli
from meta_train.command import run as run_lib
from meta_train.command.run_lock import LOCK_FILE, RunLock
from tests.trees import assert_trees_equal

LOPT = ["--task", "digits_mlp", "--lopt", "mlp", "--estimator", "nres", "--num-particles", "4",
        "--sigma", "0.01", "--unroll-length", "5", "--horizon", "50", "--eval-every", "0",
        "--eval-steps", "50", "--log-every", "1", "--checkpoint-every", "1", "--wandb",
        "disabled", "--seed", "1"]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
# Outer steps of the read runs: each saves a checkpoint, so the readers see a few dozen states.
STEPS = 60
# Outer steps of the finished run where no live run is read (what the quick tier reads).
FINISHED_STEPS = 3


def _train_process(out: Path, steps: int) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-m", "meta_train", "train", *LOPT, "--outer-steps",
                           str(steps), "--out", str(out)], env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, what: str, timeout: float = 300, process=None):
  deadline = time.monotonic() + timeout
  while not predicate():
    if process is not None and process.poll() is not None:
      raise AssertionError(f"{what}: the process exited {process.returncode}: "
                           f"{process.stderr.read()[-2000:]}")
    if time.monotonic() > deadline:
      raise AssertionError(f"timed out waiting for {what}")
    time.sleep(0.1)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
  """Every path under ``folder`` with its size and modification time."""
  out = {}
  for root, dirs, files in os.walk(folder):
    for name in dirs + files:
      path = os.path.join(root, name)
      stat = os.stat(path)
      out[os.path.relpath(path, folder)] = (stat.st_size, stat.st_mtime_ns)
  return out


def _steps(run_dir: Path) -> int:
  """The outer steps a run was configured to train."""
  return json.loads((run_dir / "config.json").read_text())["outer"]["outer_steps"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, request) -> Path:
  """A finished run: of STEPS steps where a live run is read (the undisturbed reference and the
  readers' warm-up), else of FINISHED_STEPS (the run the readers of a finished run read)."""
  live = any(getattr(item, "originalname", None) == "test_reading_a_live_run_never_disturbs_it"
             for item in request.session.items)
  out = tmp_path_factory.mktemp("runs") / "undisturbed"
  process = _train_process(out, STEPS if live else FINISHED_STEPS)
  _, err = process.communicate(timeout=600)
  assert process.returncode == 0, err[-2000:]
  return out


@pytest.mark.slow  # quick tier: test_readers_write_nothing (the readers on a finished run)
def test_reading_a_live_run_never_disturbs_it(finished_run, tmp_path):
  live, scratch = tmp_path / "live", tmp_path / "scratch"
  scratch.mkdir()
  reader = subprocess.Popen([sys.executable, "-m", "tests.read_live_run", str(finished_run),
                             str(live), str(scratch)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
  _wait_for(lambda: (scratch / "ready").exists(), "the reader's warm-up", process=reader)
  trainer = _train_process(live, STEPS)
  _, err = trainer.communicate(timeout=600)
  (scratch / "stop").write_text("")
  reader.communicate(timeout=300)
  assert trainer.returncode == 0, err[-3000:]
  assert reader.returncode == 0
  reads = [json.loads(line) for line in (scratch / "reads.jsonl").read_text().splitlines()]
  errors = [r for r in reads if "error" in r]
  assert not errors, errors[0]["trace"]
  live_reads = [r["step"] for r in reads if "step" in r and r["step"] < STEPS]
  assert len(live_reads) >= 3, reads  # the reads overlapped the training
  assert_trees_equal(run_lib.load_run(live).state, run_lib.load_run(finished_run).state)


def test_readers_write_nothing(finished_run, tmp_path, capsys, caplog):
  """Not a file is created, changed or removed in the run folder, not even the temporary folder
  of a checkpoint being saved; readers print and log no warning."""
  steps = _steps(finished_run)
  pending = finished_run / "checkpoints" / f"{steps + 1}.orbax-checkpoint-tmp"
  pending.mkdir(exist_ok=True)
  (pending / "being_written").write_text("a save in progress")
  before = _snapshot(finished_run)
  assert run_lib.load_run(finished_run).step == steps
  assert cli.main(["eval", str(finished_run), "--episodes", "1"]) == 0
  assert cli.main(["export", str(finished_run), "--out", str(tmp_path / "l.npz")]) == 0
  assert cli.main(["plot", str(finished_run), "--out", str(tmp_path / "p.png")]) == 0
  assert _snapshot(finished_run) == before
  assert "WARNING" not in capsys.readouterr().err
  assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_load_run_and_export_build_nothing_of_the_writer(finished_run, tmp_path, monkeypatch):
  """Following ``load_run`` and ``export`` through the calls: no check or build of the writer's
  configuration, no task, no data, no estimator, no device mesh, no trainer (each raises here);
  the exported theta is the checkpoint's, bit for bit."""
  import lopt_meta
  import tasks
  from meta_train.command import build, checks
  from meta_train.engine import estimators, sharding, trainer
  from tasks import data

  def forbidden(*args, **kwargs):
    raise AssertionError("a reader reached the writer's path")
  for owner, name in ((build, "build_run"), (build, "build_system"), (build, "build_estimator"),
                      (checks, "check"), (tasks, "build"), (tasks.registry, "build"),
                      (data, "load"), (estimators, "make"), (sharding, "pairs_mesh"),
                      (trainer.Trainer, "__init__"), (trainer.Trainer, "init")):
    monkeypatch.setattr(owner, name, forbidden)
  loaded = run_lib.load_run(finished_run)
  assert loaded.step == _steps(finished_run) and int(loaded.state.step) == loaded.step
  assert cli.main(["export", str(finished_run), "--out", str(tmp_path / "l.npz")]) == 0
  _, theta, metadata = lopt_meta.read_optimizer(tmp_path / "l.npz")
  assert metadata["step"] == loaded.step
  assert_trees_equal(jax.tree.map(np.asarray, theta), jax.tree.map(np.asarray, loaded.theta))


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, capsys):
  out = tmp_path / "live"
  trainer = _train_process(out, 100_000)
  try:
    _wait_for(lambda: (out / "checkpoints" / "1").is_dir(), "the first checkpoint",
              process=trainer)
    config = (out / "config.json").read_text()
    capsys.readouterr()
    for argv in (["train", *LOPT, "--outer-steps", "5", "--out", str(out)],
                 ["train", *LOPT, "--outer-steps", "5", "--out", str(out), "--overwrite"],
                 ["resume", str(out)]):
      assert cli.main(argv) == 2
      err = capsys.readouterr().err
      assert err.startswith(f"meta-train: error: {'run_dir' if argv[0] == 'resume' else 'out'}: "
                            f"run folder {out} is being trained by host ")
      assert f"process {trainer.pid} (since " in err and err.count("\n") == 1
    assert (out / "config.json").read_text() == config
    assert trainer.poll() is None  # the live run goes on
  finally:
    trainer.send_signal(signal.SIGTERM)
    _, err = trainer.communicate(timeout=120)
  assert trainer.returncode == 143, err[-2000:]
  assert (out / "checkpoints").is_dir() and run_lib.load_run(out).step >= 1


def test_a_lock_left_by_kill_nine_does_not_block(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from meta_train.command.run_lock import RunLock; "
       f"RunLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); time.sleep(600)"],
      env=ENV, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline() == "locked\n"
  with pytest.raises(run_lib.ConfigError, match=f"process {holder.pid} "):
    RunLock(tmp_path).acquire()
  holder.kill()
  holder.wait()
  lock = RunLock(tmp_path)
  assert lock.acquire().pid == os.getpid()  # the file the killed process left is taken over
  assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
  lock.release()
  assert not (tmp_path / LOCK_FILE).exists()  # a run that ended leaves no lock file


def test_train_into_a_finished_run_is_refused_and_overwrite_replaces_it(finished_run, tmp_path,
                                                                        capsys):
  out = tmp_path / "again"
  assert cli.main(["train", *LOPT, "--outer-steps", "2", "--out", str(out)]) == 0
  capsys.readouterr()
  assert cli.main(["train", *LOPT, "--outer-steps", "2", "--out", str(out)]) == 2
  assert capsys.readouterr().err == (
      f"meta-train: error: out: run folder {out} already holds this run; resume it with "
      f"'meta-train resume {out}', choose another --out, or pass --overwrite\n")
  (out / "notes.txt").write_text("mine")
  assert cli.main(["train", *LOPT, "--outer-steps", "3", "--out", str(out), "--overwrite"]) == 0
  assert run_lib.load_run(out).step == 3 and (out / "notes.txt").read_text() == "mine"
  assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["1", "2", "3"]
