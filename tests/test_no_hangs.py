"""Every registered system, with every learned optimizer and every estimator, finishes ``init`` and
one ``estimate`` with 2 antithetic pairs (and 4, where ``tests.every_system.FOUR_PAIRS`` says).

``tests/every_system.py`` runs the systems in two subprocesses, one system after another as each
finishes its last, with a time limit on every combination: a program that hangs (as
``lstm_copy`` did with two or more pairs, in jaxlib's CPU LAPACK kernels) fails its test, naming
the combination, instead of stalling the suite; the subprocess is killed and a new one runs the
systems left. Two subprocesses run at a time (they are mostly XLA compilation).

The quick tier (``-m "not slow"``) runs the systems in ``QUICK`` under the same time limits: an
analytic system that never resets (every estimator but FullES runs, FullES is refused) and a fixed
optimizer (refused before any compute): the workers, the time limits and the refusals. The other
systems (the learned optimizers on inner tasks and the MuJoCo tasks among them) are ``slow``; in
the quick tier, ``tests/test_preflight.py`` still lowers every system's vmapped ``init`` and
``step`` and checks them for the LAPACK calls that hung, learned-optimizer systems run their
estimates in ``tests/test_distribution.py``, ``tests/test_accelerator_ready.py`` and
``tests/test_run_readers.py``, and MuJoCo's host callback in ``tests/test_sharding.py`` and
``tests/test_policy_learning.py``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import pytest

import lopt_meta
from meta_train.engine import estimators
from tasks.locomotion import policy_learning
from tests import optional
from tests.every_system import NAMES, pairs_of

ROOT = Path(__file__).resolve().parent.parent
LIMIT_S = 180.0  # per combination (about 20 s at most here), compilation included

SLOWEST_FIRST = ("lstm_copy/mlp", "cifar10_resnet/mlp", "digits_mlp/anchored_adam",
                 "digits_mlp/adafac", "many_hparams", "rnn_copy")  # the workers finish together
QUICK = ("influence_balancing", "digits_mlp/adam")
# Refused before any compute (a `skip` line with the error): FullES needs episodes that end, and
# a fixed optimizer has no meta-parameters.
FIXED = {o for o in lopt_meta.OPTIMIZERS
         if not jax.tree.leaves(lopt_meta.get_optimizer(o).init_theta(jax.random.key(0)))}


def refusal(name: str, estimator: str) -> str | None:
  """The start of the error expected for a combination, or None if it must run."""
  task, _, lopt = name.partition("/")
  if lopt in FIXED:
    return f"lopt: {lopt!r} has no meta-parameters"
  if task == "influence_balancing" and estimator == "full_es":
    return "estimator: full_es needs a finite horizon"
  if task in policy_learning.REGISTERED and estimator == "tbptt":  # MuJoCo's C engine
    return "estimator: tbptt backpropagates through the steps"
  return None


@dataclasses.dataclass
class Outcome:
  lines: list[str]
  returncode: int | None
  hung: str | None  # the combination running when the time limit passed
  seconds: float


class Worker:
  """One ``tests.every_system -`` subprocess, fed one name at a time; a new one after a hang or
  a crash."""

  def __init__(self):
    self.process = None
    self.lines: queue.Queue = queue.Queue()

  def _start(self):
    self.process = subprocess.Popen([sys.executable, "-m", "tests.every_system", "-"], cwd=ROOT,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=True)
    self.lines = queue.Queue()
    threading.Thread(target=self._read, args=(self.process, self.lines), daemon=True).start()

  @staticmethod
  def _read(process, lines):
    for line in process.stdout:
      lines.put(line.rstrip("\n"))
    lines.put(None)  # the process ended

  def run(self, name: str) -> Outcome:
    """Runs ``name``'s combinations; kills the subprocess when one runs over ``LIMIT_S``."""
    if self.process is None:
      self._start()
    start = time.monotonic()
    current, since, lines = "starting", start, []
    self.process.stdin.write(name + "\n")
    self.process.stdin.flush()
    while True:
      try:
        line = self.lines.get(timeout=0.5)
      except queue.Empty:
        if time.monotonic() - since > LIMIT_S:
          self.close(kill=True)
          return Outcome(lines, None, current, time.monotonic() - start)
        continue
      if line is None:  # died before it finished: its exit status (never 0 here) and output
        returncode = self.process.wait()
        self.process = None
        return Outcome(lines, returncode or -1, None, time.monotonic() - start)
      if line == f"finished {name}":
        return Outcome(lines, 0, None, time.monotonic() - start)
      lines.append(line)
      if line.startswith(("start ", "done ")):
        current, since = line.split(" ", 1)[1].strip(), time.monotonic()

  def close(self, kill: bool = False):
    """Ends the subprocess: at the end of its input, or killed with what it started."""
    process, self.process = self.process, None
    if process is None:
      return
    if not kill:
      try:
        process.stdin.close()
        process.wait(timeout=60)
      except (OSError, subprocess.TimeoutExpired):
        kill = True
    if kill and process.poll() is None:
      try:
        os.killpg(process.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    process.wait()


@pytest.fixture(scope="module")
def outcomes(request):
  """The outcomes of the selected systems whose parts are here, run by two workers, each taking
  the next system as it finishes one (each test waits for its own)."""
  selected = {item.callspec.params["name"] for item in request.session.items
              if getattr(item, "originalname", None) == "test_init_and_estimate_finish"}
  order = sorted((n for n in NAMES if n in selected and not optional.missing_parts_of(n)),
                 key=lambda n: SLOWEST_FIRST.index(n) if n in SLOWEST_FIRST else len(NAMES))
  todo: queue.Queue = queue.Queue()
  futures = {}
  for name in order:
    futures[name] = concurrent.futures.Future()
    todo.put(name)

  def work():
    worker = Worker()
    try:
      while True:
        try:
          name = todo.get_nowait()
        except queue.Empty:
          return
        try:
          futures[name].set_result(worker.run(name))
        except BaseException as e:  # noqa: BLE001  (the test of that name reports it)
          futures[name].set_exception(e)
          worker.close(kill=True)
    finally:
      worker.close()

  threads = [threading.Thread(target=work, daemon=True) for _ in range(2)]
  for thread in threads:
    thread.start()
  yield futures
  while not todo.empty():  # an interrupted session: the workers stop after their current system
    try:
      todo.get_nowait()
    except queue.Empty:
      break
  for thread in threads:
    thread.join()


@pytest.mark.parametrize("name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow)
                                  for n in NAMES])
def test_init_and_estimate_finish(name, outcomes):
  """Every estimator with 2 pairs, and 4 for some (see the module docstring)."""
  optional.require_parts_of(name)
  outcome = outcomes[name].result()
  print(f"{name}: {outcome.seconds:.0f} s")
  tail = "\n".join(outcome.lines[-15:])
  assert outcome.hung is None, (
      f"{name}: '{outcome.hung}' (estimator, pairs) did not finish in {LIMIT_S:.0f} s:\n{tail}")
  assert outcome.returncode == 0, f"{name} failed:\n{tail}"
  combos = [(e, p) for e in estimators.ESTIMATORS for p in pairs_of(name)]
  expected = {f"{name} {e} {p}" for e, p in combos if refusal(name, e) is None}
  done = {" ".join(line.split()[1:4]) for line in outcome.lines if line.startswith("done ")}
  assert done == expected, f"{name}: ran {sorted(done)}, expected {sorted(expected)}"
  skipped = {" ".join(line.split(":")[0].split()[1:4]): line.split(": ", 1)[1]
             for line in outcome.lines if line.startswith("skip ")}
  assert sorted(skipped) == sorted(f"{name} {e} {p}" for e, p in combos if refusal(name, e))
  for combo, error in skipped.items():
    assert error.startswith(refusal(name, combo.split()[1])), error
