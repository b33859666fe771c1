"""Every module of ``lopt_meta``, ``tasks`` and ``meta_train`` imports as the first project import
of a fresh interpreter, so that no import cycle hides behind the order in which modules happen to
be imported elsewhere (``import meta_train.engine.workers`` first once failed on one).

The modules are found by walking the packages' source folders, so a new module is covered without
editing this test. A fresh ``python -c`` per module would cost a jax import each (seconds), so one
subprocess (fresh, so that pytest's own imports of project modules do not count) imports only the
third-party packages the project is built on, checks that no project module is loaded, then
forks one child per module (two at a time); each child imports its one module and exits 0, or
writes the traceback and exits 1. The test fails naming every module that did not import, with
its error.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("lopt_meta", "tasks", "meta_train")
LIMIT_S = 120.0  # per module; an import takes a few seconds at most here

# Run in the fresh subprocess: argv[1] is the JSON list of modules. Prints one JSON line,
# {module: error} for the modules that failed (empty when all imported).
PARENT = r"""
import json, os, select, sys, tempfile, time

import flax, jax, jax.numpy, numpy, optax  # third-party only: shared by every child

PROJECT = ("lopt_meta", "tasks", "meta_train", "benchmarks", "tests")
LIMIT_S = float(sys.argv[2])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in PROJECT)
if loaded:
  print(json.dumps({"<parent>": f"project modules loaded before forking: {loaded}"}))
  sys.exit(0)


def child(module, log):
  # Runs in the forked child: imports `module`, exits 0, or writes the traceback and exits 1.
  fd = os.open(log, os.O_WRONLY)
  os.dup2(fd, 1)
  os.dup2(fd, 2)
  code = 1
  try:
    import importlib
    importlib.import_module(module)
    code = 0
  except BaseException:
    import traceback
    traceback.print_exc()
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


pending, running, failed = list(json.loads(sys.argv[1])), {}, {}
while pending or running:
  while pending and len(running) < 2:
    module = pending.pop(0)
    log = tempfile.mkstemp(prefix="import-", suffix=".log")[1]
    pid = os.fork()
    if pid == 0:
      child(module, log)
    running[pid] = (module, log, time.monotonic())
  pid, status = os.waitpid(-1, os.WNOHANG)
  if pid == 0:
    for other, (module, log, start) in list(running.items()):
      if time.monotonic() - start > LIMIT_S:
        os.kill(other, 9)
        failed[module] = f"did not import in {LIMIT_S:.0f} s"
    time.sleep(0.02)
    continue
  module, log, _ = running.pop(pid)
  with open(log) as f:
    output = f.read()
  os.remove(log)
  if module not in failed and os.waitstatus_to_exitcode(status) != 0:
    failed[module] = output.strip() or f"exit status {os.waitstatus_to_exitcode(status)}"
print(json.dumps(failed))
"""


def project_modules() -> list[str]:
  """The dotted names of every module and package (``__init__``) under ``PACKAGES``' folders."""
  modules = []
  for package in PACKAGES:
    for path in sorted((ROOT / package).rglob("*.py")):
      parts = path.relative_to(ROOT).with_suffix("").parts
      if "__pycache__" in parts or parts[-1] == "__main__":
        continue
      modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
  return modules


def test_every_module_imports_alone():
  """Each module, imported first and alone in a fresh interpreter (see the module docstring)."""
  modules = project_modules()
  assert {"lopt_meta", "tasks", "meta_train", "meta_train.engine.workers"} <= set(modules)
  result = subprocess.run([sys.executable, "-c", PARENT, json.dumps(modules), str(LIMIT_S)],
                          cwd=ROOT, capture_output=True, text=True, timeout=30 * 60)
  assert result.returncode == 0, f"the forking parent failed:\n{result.stdout}\n{result.stderr}"
  failed = json.loads(result.stdout.strip().splitlines()[-1])
  report = "\n\n".join(f"--- {module}\n{error}" for module, error in sorted(failed.items()))
  assert not failed, (f"{len(failed)} of {len(modules)} modules do not import first and alone:"
                      f"\n\n{report}")
