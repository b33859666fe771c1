"""Runs: exact and crash-safe resume, checkpoints, signals, W&B, progress, plots."""

import io
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from meta_train.command import cli
from meta_train.command import run as run_lib
from meta_train.command.logs import default_wandb_mode, read_metrics
from meta_train.command.progress import Progress
from tests.trees import assert_trees_equal

TOY = ["--task", "lorenz", "--horizon", "100", "--estimator", "nres", "--num-particles", "8",
       "--sigma", "0.04", "--unroll-length", "10", "--outer-lr", "1e-5", "--outer-optimizer", "sgd",
       "--seed", "3", "--log-every", "10", "--eval-every", "0", "--wandb", "disabled"]


def _train(out, steps, *extra):
  return cli.main(["train", *TOY, "--outer-steps", str(steps), "--out", str(out), *extra])


# Stopped between chunks (quick: 25 is not a chunk boundary) or at one (slow).
@pytest.mark.parametrize("first, checkpoint_every",
                         [pytest.param(20, 10, marks=pytest.mark.slow), (25, 100)])
def test_resume_is_exact(tmp_path, first, checkpoint_every):
  """Training 40 steps equals training `first`, stopping, and resuming to 40: the whole state
  (theta, outer optimizer, every worker, the key) bitwise equal; 25 is not a chunk boundary."""
  every = ["--checkpoint-every", str(checkpoint_every)]
  assert _train(tmp_path / "whole", 40, *every) == 0
  assert _train(tmp_path / "split", first, *every) == 0
  assert cli.main(["resume", str(tmp_path / "split"), "--outer-steps", "40"]) == 0
  whole, split = run_lib.load_run(tmp_path / "whole"), run_lib.load_run(tmp_path / "split")
  assert whole.step == split.step == 40
  assert_trees_equal(whole.state, split.state)
  assert json.loads((tmp_path / "split" / "config.json").read_text())["outer"]["outer_steps"] == 40
  split_records = {r["step"]: r for r in read_metrics(tmp_path / "split")}
  whole_records = {r["step"]: r for r in read_metrics(tmp_path / "whole")}
  # The split run adds a record where it stopped; log windows it did not cut are identical.
  assert sorted(split_records) == sorted(set(whole_records) | {first})
  for step in (10, 20, 40):
    assert split_records[step]["meta_loss"] == whole_records[step]["meta_loss"]
    assert split_records[step]["total_unroll_steps"] == whole_records[step]["total_unroll_steps"]
  assert '"event": "resume"' in (tmp_path / "split" / "metrics.jsonl").read_text()


def test_load_run(tmp_path):
  assert _train(tmp_path / "r", 20) == 0
  loaded = run_lib.load_run(tmp_path / "r")
  assert loaded.step == 20 and int(loaded.state.step) == 20
  assert loaded.config.estimator.num_particles == 8
  assert np.asarray(loaded.theta).shape == (2,)
  assert loaded.metrics[-1]["step"] == 20
  np.testing.assert_allclose(loaded.metrics[-1]["theta"], np.asarray(loaded.theta), rtol=1e-6)


def _meta_train_process(out, steps, *extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  args = [sys.executable, "-m", "meta_train", "train", *TOY, "--outer-steps", str(steps),
          "--out", str(out), *extra]
  return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _steps(run_dir):
  folder = Path(run_dir) / "checkpoints"
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []


def _wait_for_checkpoints(run_dir, count, process, timeout=120, after_step=-1):
  """Until ``run_dir`` holds ``count`` checkpoints, the latest beyond ``after_step``."""
  deadline = time.time() + timeout
  while len(_steps(run_dir)) < count or max(_steps(run_dir)) <= after_step:
    assert process.poll() is None, process.communicate()
    assert time.time() < deadline, "no checkpoints appeared"
    time.sleep(0.05)


def test_kill_nine_at_any_moment_loses_at_most_the_last_interval(tmp_path):
  """A real process is SIGKILLed at random moments (checkpoints every 5 steps, some kills land
  mid-save); each time every complete checkpoint stays readable, none is deleted by the broken
  save, and resume continues from the latest one."""
  out = tmp_path / "crash"
  rng = random.Random(0)
  process = _meta_train_process(out, 100000, "--checkpoint-every", "5", "--keep-checkpoints", "3")
  previous_latest = 0
  for attempt in range(3):
    _wait_for_checkpoints(out, 2, process)
    time.sleep(rng.uniform(0.0, 0.3))
    before = _steps(out)
    process.send_signal(signal.SIGKILL)
    process.wait()
    after = _steps(out)
    assert set(before) <= set(after) | set(range(0, min(after, default=0)))  # rotation only
    latest = max(after)
    assert latest >= max(before) and latest > previous_latest
    loaded = run_lib.load_run(out)
    assert loaded.step == latest
    previous_latest = latest
    if attempt < 2:
      env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
      process = subprocess.Popen([sys.executable, "-m", "meta_train", "resume", str(out),
                                  "--outer-steps", "100000"], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
      _wait_for_checkpoints(out, 1, process, after_step=latest)


def test_corrupted_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
  out = tmp_path / "r"
  assert _train(out, 30, "--checkpoint-every", "10") == 0
  assert _steps(out) == [10, 20, 30]
  for path in (out / "checkpoints" / "30" / "state").rglob("*"):
    if path.is_file() and path.stat().st_size > 0:
      path.write_bytes(b"\0garbage" * 7)  # every data file of the latest checkpoint is garbage
  capsys.readouterr()
  loaded = run_lib.load_run(out)
  assert loaded.step == 20
  err = capsys.readouterr().err
  assert "meta-train: checkpoint 30 in" in err and "cannot be read" in err and "trying the previous" in err
  garbage = sorted(p.read_bytes() for p in (out / "checkpoints" / "30").rglob("*") if p.is_file())
  assert cli.main(["resume", str(out), "--outer-steps", "40"]) == 0
  assert run_lib.load_run(out).step == 40
  assert _steps(out) == [20, 30, 40]  # 30 saved again (keep 3)
  kept = out / "unreadable_checkpoints" / "30"  # the unreadable one is moved aside, not deleted
  assert sorted(p.read_bytes() for p in kept.rglob("*") if p.is_file()) == garbage
  assert "moved unreadable checkpoint" in capsys.readouterr().err


def test_no_readable_checkpoint_is_one_line_exit_2(tmp_path, capsys):
  out = tmp_path / "r"
  assert _train(out, 20, "--checkpoint-every", "10") == 0
  for path in (out / "checkpoints").rglob("*"):
    if path.is_file() and path.parent.name == "state" and path.stat().st_size > 0:
      path.write_bytes(b"garbage")
  before = {str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()}
  capsys.readouterr()
  assert cli.main(["resume", str(out), "--outer-steps", "30"]) == 2
  last = capsys.readouterr().err.splitlines()[-1]
  assert last.startswith(f"meta-train: error: checkpoint: no readable checkpoint in "
                         f"{out.resolve()}/checkpoints (step 20: ")
  assert "; step 10: " in last
  assert {str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path):
  out = tmp_path / "term"
  process = _meta_train_process(out, 100000, "--checkpoint-every", "100000")
  deadline = time.time() + 120
  while not (out / "metrics.jsonl").exists() or "meta_loss" not in (out / "metrics.jsonl").read_text():
    assert process.poll() is None and time.time() < deadline
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  _, err = process.communicate(timeout=120)
  assert process.returncode == 143, err
  assert "checkpoint saved" in err
  step = run_lib.load_run(out).step
  assert step > 0 and step % 10 == 0
  events = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
  assert {"event": "interrupted", "step": step, "signal": int(signal.SIGTERM)} in events


def _wandb_records(path, block=32768):
  """The protobuf records of a W&B run file (its LevelDB-style log: a 7-byte header, then
  records of checksum u32, length u16, type u8 (1 full, 2 first, 3 middle, 4 last) in 32 KiB
  blocks)."""
  from wandb.proto import wandb_internal_pb2
  data = Path(path).read_bytes()
  assert data[:4] == b":W&B"
  pos, records, pending = 7, [], b""
  while pos + 7 <= len(data):
    if block - pos % block < 7:  # the rest of a block too small for a header is padding
      pos += block - pos % block
      continue
    _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
    pending += data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      records.append(record)
      pending = b""
  return records


def test_wandb_offline_writes_its_run_files(tmp_path):
  out = tmp_path / "wb"
  args = ["train", *TOY[:-2], "--wandb", "offline", "--outer-steps", "20", "--out", str(out)]
  assert cli.main(args) == 0
  import wandb
  wandb.teardown()  # stops W&B's service process: its files are then closed and complete
  runs = list((out / "wandb").glob("offline-run-*"))
  assert len(runs) == 1
  files = list(runs[0].glob("run-*.wandb"))
  assert len(files) == 1 and (out / "wandb_id").read_text().strip() in runs[0].name
  records = _wandb_records(files[0])
  history = {}
  for r in records:
    if r.WhichOneof("record_type") == "history":
      row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
             for item in r.history.item}
      history[row["_step"]] = row
  kinds = [r.WhichOneof("record_type") for r in records]
  assert "run" in kinds, kinds
  config = next(r.run.config for r in records if r.WhichOneof("record_type") == "run")
  assert {item.key for item in config.update} >= {"task", "estimator", "outer", "run"}
  logged = {r["step"]: r for r in read_metrics(out)}
  assert sorted(history) == sorted(logged) == [10, 20]
  for step, row in history.items():  # W&B got what metrics.jsonl has
    for key in ("meta_loss", "grad_norm", "grad_variance", "nonfinite", "outer_steps_per_s"):
      assert row[key] == pytest.approx(logged[step][key], rel=1e-6), key


def test_wandb_defaults_to_offline_without_an_api_key(tmp_path, monkeypatch):
  monkeypatch.delenv("WANDB_API_KEY", raising=False)
  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
  assert default_wandb_mode() == "offline"
  monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
  assert default_wandb_mode() == "online"


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_bar_on_a_terminal_plain_lines_under_ci(monkeypatch):
  monkeypatch.delenv("CI", raising=False)
  stream = _Terminal()
  progress = Progress(100, stream=stream)
  assert progress.bar is not None
  progress.update(40, {"meta_loss": 0.123456, "outer_steps_per_s": 5.0})
  progress.bar.refresh()
  progress.close()
  assert "40/100" in stream.getvalue() and "meta_loss=0.1235" in stream.getvalue()
  monkeypatch.setenv("CI", "1")
  stream = _Terminal()
  progress = Progress(100, stream=stream)
  assert progress.bar is None
  progress.update(40, {"meta_loss": 0.123456, "outer_steps_per_s": 5.0})
  assert stream.getvalue() == "step 40/100: meta_loss 0.1235  5.0 steps/s\n"
  stream = io.StringIO()  # evaluations every 10 of 10,000 steps: about 50 lines, and the last
  progress = Progress(10_000, stream=stream)
  for done in range(10, 10_001, 10):
    progress.note(done, f"step {done}: eval_loss 1")
  lines = stream.getvalue().splitlines()
  assert 50 <= len(lines) <= 51 and lines[-1] == "step 10000: eval_loss 1"


def test_progress_lines_when_not_on_a_terminal(tmp_path):
  process = _meta_train_process(tmp_path / "p", 50)
  _, err = process.communicate(timeout=300)
  assert process.returncode == 0, err
  lines = [l for l in err.splitlines() if l.startswith("step ")]
  assert lines and lines[-1].startswith("step 50/50: meta_loss")


def test_plot_draws_a_png(tmp_path):
  for seed in ("1", "2"):
    assert cli.main(["train", *TOY[:-2], "--wandb", "disabled", "--outer-steps", "20",
                     "--eval-every", "10", "--seed", seed, "--out", str(tmp_path / seed)]) == 0
  png = tmp_path / "runs.png"
  assert cli.main(["plot", str(tmp_path / "1"), str(tmp_path / "2"), "--out", str(png)]) == 0
  data = png.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
