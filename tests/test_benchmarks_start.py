"""Every benchmark script starts: ``python -m benchmarks.NAME --help`` prints its usage and exits
0 within a time limit, so an import error (a cycle, a missing name, an optional package imported
at module level) cannot hide in a script that the tests never run.

The scripts are the ``benchmarks/*.py`` modules with an ``if __name__ == "__main__":`` block
(helpers such as ``common.py`` have none), found by reading the folder, so a new script is covered
without editing this test. A fresh ``python -m`` per script would cost a jax import each (most of
its seconds), so, as in tests/test_imports.py, one fresh subprocess imports only the third-party
packages the project is built on, checks that no project module is loaded, then forks one child
per script (two at a time); each child runs its script as ``python -m`` does
(:func:`runpy.run_module` as ``__main__``, ``sys.argv`` its path and ``--help``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIMIT_S = 120.0  # per script; a few seconds here
MAIN = re.compile(r"""^if __name__ == ["']__main__["']:""", re.MULTILINE)

# Run in the fresh subprocess: argv[1] is the JSON list of scripts. Prints one JSON line,
# {script: {"returncode", "stdout", "stderr"}}, the return code None for a script that ran over
# the time limit (its child is then killed).
PARENT = r"""
import json, os, sys, tempfile, time

import flax, jax, jax.numpy, numpy, optax  # third-party only: shared by every child

PROJECT = ("lopt_meta", "tasks", "meta_train", "benchmarks", "tests")
LIMIT_S = float(sys.argv[2])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in PROJECT)
if loaded:
  print(json.dumps({"<parent>": f"project modules loaded before forking: {loaded}"}))
  sys.exit(0)


def child(name, out, err):
  # Runs in the forked child: `python -m benchmarks.NAME --help`, exits with its status.
  for fd, path in ((1, out), (2, err)):
    os.dup2(os.open(path, os.O_WRONLY), fd)
  code = 1
  try:
    import runpy
    sys.argv = [os.path.join("benchmarks", name + ".py"), "--help"]
    runpy.run_module("benchmarks." + name, run_name="__main__", alter_sys=True)
    code = 0
  except SystemExit as exit:
    code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
  except BaseException:
    import traceback
    traceback.print_exc()
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def read(path):
  with open(path) as f:
    text = f.read()
  os.remove(path)
  return text


pending, running, results = list(json.loads(sys.argv[1])), {}, {}
while pending or running:
  while pending and len(running) < 2:
    name = pending.pop(0)
    out, err = (tempfile.mkstemp(prefix=f"help-{name}-", suffix=s)[1] for s in (".out", ".err"))
    pid = os.fork()
    if pid == 0:
      child(name, out, err)
    running[pid] = (name, out, err, time.monotonic())
  pid, status = os.waitpid(-1, os.WNOHANG)
  if pid == 0:
    for other, (name, out, err, start) in list(running.items()):
      if time.monotonic() - start > LIMIT_S and name not in results:
        os.kill(other, 9)
        results[name] = {"returncode": None, "stdout": "", "stderr": ""}
    time.sleep(0.02)
    continue
  name, out, err, _ = running.pop(pid)
  stdout, stderr = read(out), read(err)
  if name not in results:
    results[name] = {"returncode": os.waitstatus_to_exitcode(status), "stdout": stdout,
                     "stderr": stderr}
print(json.dumps(results))
"""


def scripts() -> list[str]:
  """The names of the ``benchmarks/*.py`` modules that run as scripts."""
  return [p.stem for p in sorted((ROOT / "benchmarks").glob("*.py"))
          if p.stem != "__init__" and MAIN.search(p.read_text())]


@pytest.fixture(scope="module")
def results():
  """Every script's ``--help`` run (see the module docstring): ``{name: result}``."""
  names = scripts()
  done = subprocess.run([sys.executable, "-c", PARENT, json.dumps(names), str(LIMIT_S)],
                        cwd=ROOT, capture_output=True, text=True, timeout=30 * 60)
  assert done.returncode == 0, f"the forking parent failed:\n{done.stdout}\n{done.stderr}"
  out = json.loads(done.stdout.strip().splitlines()[-1])
  assert "<parent>" not in out, out["<parent>"]
  return out


def test_scripts_found():
  """The scripts are found, and helpers are not among them."""
  found = scripts()
  assert "variance" in found and "reference_pes" in found, found
  assert "common" not in found


@pytest.mark.parametrize("name", scripts())
def test_help_exits_0(name, results):
  """``--help`` exits 0 and prints a usage line."""
  result = results[name]
  assert result["returncode"] is not None, (
      f"benchmarks.{name} --help did not finish in {LIMIT_S:.0f} s")
  output = f"stdout:\n{result['stdout']}\nstderr:\n{result['stderr']}"
  assert result["returncode"] == 0, (
      f"benchmarks.{name} --help exited {result['returncode']}:\n{output}")
  assert "usage:" in result["stdout"], f"benchmarks.{name} --help printed no usage:\n{output}"
