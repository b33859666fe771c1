"""A stalled or stuck run: the stall warning, and SIGINT/SIGTERM ending a compiled step that never
returns, with the checkpoints intact.

The quick tier (``-m "not slow"``) runs the watchdog on its own (grace period, second signal,
writes, stall warnings) and one real stuck run ended by SIGTERM after the grace period; the
``slow`` case adds a real stuck run ended at once by a second SIGINT."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from meta_train.command.watchdog import Watchdog

ROOT = Path(__file__).resolve().parent.parent


# -- the watchdog on its own (in this process, with its exit replaced) ----------------------------

@pytest.fixture
def watchdog_factory():
  """Builds started watchdogs whose ``exit`` records the status; SIGINT/SIGTERM get harmless
  Python handlers meanwhile (the run loop installs its own)."""
  made = []
  previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)}

  def make(**options):
    lines, exits = [], []
    dog = Watchdog(lines.append, poll_s=0.02, exit=exits.append, **options).start()
    made.append(dog)
    return dog, lines, exits

  yield make
  for dog in made:
    dog.stop()
  for signum, handler in previous.items():
    signal.signal(signum, handler)


def _wait_for(condition, timeout):
  deadline = time.monotonic() + timeout
  while not condition() and time.monotonic() < deadline:
    time.sleep(0.01)
  return condition()


def test_a_phase_stuck_after_a_signal_ends_the_process_after_the_grace_period(
    watchdog_factory, capsys):
  dog, _, exits = watchdog_factory(grace_s=0.5)
  dog.last_checkpoint = 40
  with dog.phase("running outer steps 41..50", steps=10):
    sent = time.monotonic()
    os.kill(os.getpid(), signal.SIGTERM)
    assert _wait_for(lambda: exits, 5.0)
    waited = time.monotonic() - sent
  assert exits == [143] and 0.5 <= waited < 2.0
  err = capsys.readouterr().err.strip()
  assert re.fullmatch(r"meta-train: SIGTERM: stuck running outer steps 41\.\.50 for 0\.\d s \(no "
                      r"progress in the 0\.5 s after the signal\); exiting with 143 without saving "
                      r"\(last complete checkpoint: step 40\)", err), err


def test_a_phase_that_ends_within_the_grace_period_is_left_to_the_loop(watchdog_factory):
  dog, _, exits = watchdog_factory(grace_s=0.5)
  with dog.phase("running outer steps 1..10", steps=10):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.3)
  with dog.phase("saving checkpoint 10"):  # what the loop does next: the grace period restarts
    time.sleep(0.3)
  dog.stop()
  assert exits == []


def test_no_exit_in_the_middle_of_a_write(watchdog_factory):
  dog, _, exits = watchdog_factory(grace_s=0.2)
  with dog.phase("running outer steps 1..10", steps=10):
    with dog.writing():
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(0.8)
      assert exits == []
    assert _wait_for(lambda: exits, 2.0) and exits == [143]


def test_a_second_signal_ends_the_process_at_once(watchdog_factory, capsys):
  dog, _, exits = watchdog_factory(grace_s=600)
  with dog.phase("initializing the workers (compilation and burn-in)"):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)
    os.kill(os.getpid(), signal.SIGINT)
    assert _wait_for(lambda: exits, 2.0)
  assert exits == [130]
  assert capsys.readouterr().err.strip().endswith(
      "(a second signal); exiting with 130 without saving (no checkpoint saved yet)")


def test_stall_warning_after_several_median_chunks_repeating_at_doubling_intervals(
    watchdog_factory):
  dog, lines, _ = watchdog_factory(stall_factor=5.0, stall_min_s=0.3)
  for _ in range(5):
    dog.completed(10, 0.001)  # 0.1 ms per outer step
  with dog.phase("running outer steps 51..60", steps=10):
    time.sleep(0.25)
    assert lines == []  # a chunk should take 1 ms, but never warn before stall_min_s
    assert _wait_for(lambda: len(lines) == 2, 2.0)
  assert re.fullmatch(r"meta-train: WARNING: still running outer steps 51\.\.60 after 0\.[3-5] s "
                      r"\(about 0\.0 s expected at the recent median of 0\.0001 s per outer "
                      r"step\); stalled\?", lines[0]), lines[0]
  first, second = (float(re.search(r"after ([\d.]+) s", line).group(1)) for line in lines)
  assert second >= 1.9 * first


def test_before_the_first_chunk_the_warning_waits_ten_times_longer(watchdog_factory):
  dog, lines, _ = watchdog_factory(stall_min_s=0.05)
  with dog.phase("initializing the workers (compilation and burn-in)"):
    time.sleep(0.3)
    assert lines == []
    assert _wait_for(lambda: lines, 2.0)
  assert lines[0].startswith("meta-train: WARNING: still initializing the workers (compilation "
                             "and burn-in) after 0.")
  assert lines[0].endswith("(compilation included); stalled?")


# -- a real run stuck in its compiled step -------------------------------------------------------

def _checkpoint_steps(run_dir):
  folder = Path(run_dir) / "checkpoints"
  return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("signum, second_signal, grace", [
    (signal.SIGTERM, False, 2),
    pytest.param(signal.SIGINT, True, 600, marks=pytest.mark.slow),  # quick: the dog on its own
])
def test_a_run_stuck_in_its_compiled_step_ends_on_a_signal_and_resumes(
    tmp_path, signum, second_signal, grace):
  """The step blocks in a host callback: the run warns of the stall; SIGTERM ends it after the
  grace period (a second SIGINT at once) with 128 + signum and one line saying where it was
  stuck; the checkpoints and metrics on disk are what they were, and resume continues."""
  block, out = tmp_path / "block", tmp_path / "run"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", CI="1")
  command = [sys.executable, "-m", "tests.blocking_run", str(block)]
  process = subprocess.Popen(
      command + ["train", "--task", "blocking_toy", "--estimator", "nres", "--num-particles", "2",
                 "--sigma", "0.1", "--unroll-length", "1", "--outer-steps", "100000",
                 "--log-every", "1", "--checkpoint-every", "5", "--eval-every", "0",
                 "--wandb", "disabled", "--stop-grace-s", str(grace), "--stall-warning-s", "1",
                 "--out", str(out)],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines = []
  reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
  reader.start()
  try:
    assert _wait_for(lambda: "10" in _checkpoint_steps(out) or process.poll() is not None, 120), \
        "no checkpoint appeared"
    assert process.poll() is None, "".join(lines)
    block.touch()  # the next step's callback waits for good
    assert _wait_for(lambda: any("WARNING: still running outer steps" in l for l in lines), 60), \
        "".join(lines[-5:])
    stuck_checkpoints = _checkpoint_steps(out)
    stuck_metrics = (out / "metrics.jsonl").read_text()
    process.send_signal(signum)
    sent = time.monotonic()
    if second_signal:
      time.sleep(0.5)
      process.send_signal(signum)
    process.wait(timeout=grace + 30 if not second_signal else 30)
    took = time.monotonic() - sent
  finally:
    if process.poll() is None:
      process.kill()
  reader.join(timeout=10)
  assert process.returncode == 128 + signum, "".join(lines[-30:])
  assert (grace <= took < grace + 10) if not second_signal else took < 10
  name, latest = signal.Signals(signum).name, max(int(s) for s in stuck_checkpoints)
  why = "a second signal" if second_signal else f"no progress in the {grace}.0 s after the signal"
  assert re.fullmatch(
      rf"meta-train: {name}: stuck running outer steps (\d+)\.\.\1 for [\d.]+ s \({why}\); "
      rf"exiting with {128 + signum} without saving \(last complete checkpoint: step {latest}\)",
      lines[-1].strip()), lines[-3:]
  assert _checkpoint_steps(out) == stuck_checkpoints  # nothing new, nothing removed, no temporaries
  metrics = (out / "metrics.jsonl").read_text()
  assert metrics == stuck_metrics and all(json.loads(l) for l in metrics.splitlines())
  block.unlink()
  resumed = subprocess.run(command + ["resume", str(out), "--outer-steps", str(latest + 3),
                                      "--stop-grace-s", "5"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert f"resuming {out} at outer step {latest} -> {latest + 3}" in resumed.stdout
  assert str(latest + 3) in _checkpoint_steps(out)
  assert json.loads((out / "config.json").read_text())["run"]["stop_grace_s"] == 5.0
  refused = subprocess.run(command + ["resume", str(out), "--stop-grace-s", "-1"], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=300)
  assert refused.returncode == 2
  assert refused.stderr == ("meta-train: error: stop_grace_s: must be a positive finite number; "
                            "got -1.0\n")
