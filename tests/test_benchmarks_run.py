"""The papers' rows run end to end at a tiny size: each benchmark below is started as a user
starts it, with options that make it finish in seconds, and must exit 0 and print its final JSON
line with the fields its README row is read from. ``--help`` (tests/test_benchmarks_start.py)
only proves a script imports; this proves its whole path still runs against today's engine.
Two run at a time. The sweeps that save each finished run (``--out``) are started a second time:
they must load what the first saved, print the same table, and rewrite nothing.

The quick tier (``-m "not slow"``) runs the policy-learning row end to end (NRES and FullES, the
estimators' driver), starts it again on its saved runs and with another configuration; the
``slow`` tests add the copy task (truncated backprop's path, and its saved runs) and both parts of
the variance benchmark (the systems' table and the learned optimizer's, each about a minute here).
The policy-learning rows need MuJoCo (tests/optional.py)."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys

import pytest

from tests import optional
from tests.test_benchmarks_start import ROOT

LIMIT_S = 600.0
TINY = {
    "variance": (["--replicates", "4", "--bootstrap", "10"], ["results"]),
    "variance_lopt": (["--part", "lopt", "--replicates", "2", "--strata", "2", "--points", "2",
                       "--meta-steps", "1", "--bootstrap", "10"], ["results", "strata"]),
    # NRES and truncated backprop take the driver's two paths (ES estimators, backprop); 1000
    # tokens still give each a few updates and scores (NRES's burn-in alone ingests 704).
    "copy_task": (["--estimators", "nres,tbptt", "--hidden", "4", "--particles", "4",
                   "--horizon", "10", "--max-length", "3", "--tokens", "1000", "--truncations",
                   "5", "--seeds", "1", "--check-every", "2"],
                  ["table", "curves"]),
    "policy_learning": (["--task", "swimmer", "--seeds", "1", "--estimators", "nres,full_es",
                         "--outer-steps", "1", "--eval-episodes", "1"], ["table", "curves"]),
}


RESUMABLE = ("copy_task", "policy_learning")
SLOW = ("variance", "variance_lopt", "copy_task")
NEEDS = {"policy_learning": optional.mujoco_missing}  # name -> what says its missing part


def require_parts(name: str) -> None:
  """Skips (or under CI fails) a test of ``name`` where a part it needs is missing."""
  message = NEEDS[name]() if name in NEEDS else None
  if message is not None:
    optional.missing(message)


def start(name: str, out=None) -> subprocess.CompletedProcess | str:
  args, _ = TINY[name]
  if out is not None:
    args = [*args, "--out", str(out)]
  module = name.removesuffix("_lopt")
  try:
    return subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=LIMIT_S)
  except subprocess.TimeoutExpired:
    return f"benchmarks.{module} {' '.join(args)} did not finish in {LIMIT_S:.0f} s"


@pytest.fixture(scope="module")
def out_dirs(tmp_path_factory):
  return {name: tmp_path_factory.mktemp(name) for name in RESUMABLE}


@pytest.fixture(scope="module")
def results(out_dirs, request):
  """The first start of each benchmark that a selected test reads and whose parts are here."""
  needed = set()
  for item in request.session.items:
    if item.module is not request.module:
      continue
    params = getattr(item, "callspec", None)  # the one test without: policy_learning's refusal
    needed |= {params.params["name"]} if params is not None else {"policy_learning"}
  needed = {n for n in needed if n not in NEEDS or NEEDS[n]() is None}
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    yield {name: pool.submit(start, name, out_dirs.get(name)) for name in TINY if name in needed}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in sorted(TINY)])
def test_tiny_run(name, results):
  """Exit 0; the last stdout line is one JSON object holding the row's fields."""
  require_parts(name)
  result = results[name].result()
  assert not isinstance(result, str), result
  output = f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
  assert result.returncode == 0, f"{name} exited {result.returncode}:\n{output}"
  record = json.loads(result.stdout.strip().splitlines()[-1])
  for field in TINY[name][1]:
    assert record.get(field), f"{name}: no {field!r} in its JSON line:\n{output}"


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in RESUMABLE])
def test_rerun_loads_the_saved_runs(name, results, out_dirs):
  """A second start with the same ``--out`` loads every saved run: the same JSON line, and the
  files are neither rewritten nor added to."""
  require_parts(name)
  first = results[name].result()
  assert not isinstance(first, str) and first.returncode == 0, first
  saved = {p: p.stat().st_mtime_ns for p in out_dirs[name].iterdir()}
  assert saved, f"{name} saved nothing in {out_dirs[name]}"
  second = start(name, out_dirs[name])
  assert not isinstance(second, str) and second.returncode == 0, second
  last = lambda r: json.loads(r.stdout.strip().splitlines()[-1])  # noqa: E731
  assert last(second) == last(first)
  assert {p: p.stat().st_mtime_ns for p in out_dirs[name].iterdir()} == saved


def test_rerun_with_another_configuration_is_refused(results, out_dirs):
  """The same ``--out`` with other settings: one clear error before any compute, nothing
  overwritten."""
  require_parts("policy_learning")
  first = results["policy_learning"].result()
  assert not isinstance(first, str) and first.returncode == 0, first
  saved = {p: p.stat().st_mtime_ns for p in out_dirs["policy_learning"].iterdir()}
  args, _ = TINY["policy_learning"]
  other = [a if a != "1" or args[i - 1] != "--outer-steps" else "2" for i, a in enumerate(args)]
  result = subprocess.run([sys.executable, "-m", "benchmarks.policy_learning", *other, "--out",
                           str(out_dirs["policy_learning"])], cwd=ROOT, capture_output=True,
                          text=True, timeout=LIMIT_S)
  assert result.returncode != 0
  assert "holds a run of another configuration" in result.stderr, result.stderr[-2000:]
  assert {p: p.stat().st_mtime_ns for p in out_dirs["policy_learning"].iterdir()} == saved
