"""Every registered system, with every learned optimizer and every estimator, finishes ``init`` and
one ``estimate`` with 2 and with 4 antithetic pairs.

Each system runs ``tests/every_system.py`` in a subprocess of its own, with a time limit on every
combination: a program that hangs (as ``lstm_copy`` did with two or more pairs, in jaxlib's CPU
LAPACK kernels) fails its test, naming the combination, instead of stalling the suite. Two
subprocesses run at a time (they are mostly XLA compilation).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
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
from tests.every_system import NAMES, runnable

ROOT = Path(__file__).resolve().parent.parent
LIMIT_S = 180.0  # per combination (about 20 s at most here), compilation included

SLOWEST_FIRST = ("cifar10_resnet/mlp", "lstm_copy/mlp")  # so that the two workers finish together
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


def run_system(name: str) -> Outcome:
  """Runs ``tests.every_system NAME``; kills it when one combination runs over ``LIMIT_S``."""
  process = subprocess.Popen([sys.executable, "-m", "tests.every_system", name], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
  start = time.monotonic()
  lines, state = [], {"current": "starting", "since": start}

  def read():
    for line in process.stdout:
      lines.append(line.rstrip("\n"))
      if line.startswith(("start ", "done ")):
        state["current"], state["since"] = line.split(" ", 1)[1].strip(), time.monotonic()

  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  hung = None
  while process.poll() is None:
    if time.monotonic() - state["since"] > LIMIT_S:
      hung = state["current"]
      os.killpg(process.pid, signal.SIGKILL)
      break
    time.sleep(0.5)
  process.wait()
  reader.join(timeout=10)
  return Outcome(lines=lines, returncode=process.returncode, hung=hung,
                 seconds=time.monotonic() - start)


@pytest.fixture(scope="module")
def outcomes(request):
  """The outcomes of the selected systems, two subprocesses at a time (each test waits for its
  own)."""
  selected = {item.callspec.params["name"] for item in request.session.items
              if getattr(item, "originalname", None) == "test_init_and_estimate_finish"}
  order = sorted((n for n in NAMES if n in selected and runnable(n)),
                 key=lambda n: n not in SLOWEST_FIRST)
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    yield {name: pool.submit(run_system, name) for name in order}


@pytest.mark.parametrize("name", NAMES)
def test_init_and_estimate_finish(name, outcomes):
  """With 2 and with 4 pairs, for every estimator (see the module docstring)."""
  if not runnable(name):
    pytest.skip("Debian's dataset-fashion-mnist is not installed here (CI installs it)")
  outcome = outcomes[name].result()
  print(f"{name}: {outcome.seconds:.0f} s")
  tail = "\n".join(outcome.lines[-15:])
  assert outcome.hung is None, (
      f"{name}: '{outcome.hung}' (estimator, pairs) did not finish in {LIMIT_S:.0f} s:\n{tail}")
  assert outcome.returncode == 0, f"{name} failed:\n{tail}"
  combos = [(e, p) for e in estimators.ESTIMATORS for p in (2, 4)]
  expected = {f"{name} {e} {p}" for e, p in combos if refusal(name, e) is None}
  done = {" ".join(line.split()[1:4]) for line in outcome.lines if line.startswith("done ")}
  assert done == expected, f"{name}: ran {sorted(done)}, expected {sorted(expected)}"
  skipped = {" ".join(line.split(":")[0].split()[1:4]): line.split(": ", 1)[1]
             for line in outcome.lines if line.startswith("skip ")}
  assert sorted(skipped) == sorted(f"{name} {e} {p}" for e, p in combos if refusal(name, e))
  for combo, error in skipped.items():
    assert error.startswith(refusal(name, combo.split()[1])), error
