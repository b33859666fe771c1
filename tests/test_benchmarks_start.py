"""Every benchmark script starts: ``python -m benchmarks.NAME --help`` prints its usage and exits
0 within a time limit, so an import error (a cycle, a missing name, an optional package imported
at module level) cannot hide in a script that the tests never run.

The scripts are the ``benchmarks/*.py`` modules with an ``if __name__ == "__main__":`` block
(helpers such as ``common.py`` have none), found by reading the folder, so a new script is covered
without editing this test. Two run at a time (each is mostly a jax import).
"""

from __future__ import annotations

import concurrent.futures
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIMIT_S = 120.0  # per script; a few seconds here
MAIN = re.compile(r"""^if __name__ == ["']__main__["']:""", re.MULTILINE)


def scripts() -> list[str]:
  """The names of the ``benchmarks/*.py`` modules that run as scripts."""
  return [p.stem for p in sorted((ROOT / "benchmarks").glob("*.py"))
          if p.stem != "__init__" and MAIN.search(p.read_text())]


def start(name: str) -> subprocess.CompletedProcess | str:
  """Runs ``python -m benchmarks.NAME --help``: its result, or a message if it ran over
  ``LIMIT_S`` (it is then killed)."""
  try:
    return subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=LIMIT_S)
  except subprocess.TimeoutExpired:
    return f"benchmarks.{name} --help did not finish in {LIMIT_S:.0f} s"


@pytest.fixture(scope="module")
def results():
  """Every script's ``--help`` run, two at a time (each test waits for its own)."""
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    yield {name: pool.submit(start, name) for name in scripts()}


def test_scripts_found():
  """The scripts are found, and helpers are not among them."""
  found = scripts()
  assert "variance" in found and "reference_pes" in found, found
  assert "common" not in found


@pytest.mark.parametrize("name", scripts())
def test_help_exits_0(name, results):
  """``--help`` exits 0 and prints a usage line."""
  result = results[name].result()
  assert not isinstance(result, str), result
  output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
  assert result.returncode == 0, f"benchmarks.{name} --help exited {result.returncode}:\n{output}"
  assert "usage:" in result.stdout, f"benchmarks.{name} --help printed no usage:\n{output}"
