"""The optional parts of a test setup, and the one rule for tests that need one.

* FashionMNIST: Debian's ``dataset-fashion-mnist`` (the IDX files in
  ``/usr/share/datasets/fashion-mnist``);
* MuJoCo: the ``rl`` extra (``mujoco``, ``mujoco-mjx`` and ``gymnasium[mujoco]``).

A test that needs one calls ``require_fashion_mnist()`` or ``require_mujoco()`` (or, for a task
or system name, ``require_parts_of(name)``) before it uses it. Where the part is missing the test
is skipped, with what is missing and the line that installs it, except under CI (the environment
variable ``CI`` set and not empty; ``.ci/run`` sets ``CI=1`` and installs both parts): there the
test fails with the same message, since a missing part is then a broken setup. A module whose
every test needs a part calls it from an autouse fixture, not at its top level (a failure there is
a collection error, which stops the whole run; the skip refuses to run there, for that reason),
and imports the part with ``import_mujoco()``, None where it is missing.

``fashion_mnist_missing()``, ``mujoco_missing()`` and ``missing_parts_of(name)`` say what is
missing without skipping, for code that must decide before a test runs (fixtures that start
work for every selected test).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os

import pytest

from tasks import data

FASHION_MNIST_INSTALL = "sudo apt-get install dataset-fashion-mnist"
MUJOCO_INSTALL = "pip install -e '.[rl]'"
MUJOCO_MODULES = ("mujoco", "mujoco.batch", "mujoco.mjx", "gymnasium")  # the rl extra's modules


def in_ci() -> bool:
  """Whether the tests run under CI: the environment variable ``CI`` is set and not empty."""
  return bool(os.environ.get("CI"))


def fashion_mnist_missing() -> str | None:
  """None where Debian's FashionMNIST files are here, else the message naming the fix."""
  if data.DEBIAN_FASHION_MNIST.is_dir():
    return None
  return (f"FashionMNIST is not installed here ({data.DEBIAN_FASHION_MNIST} does not exist); "
          f"install it with: {FASHION_MNIST_INSTALL}")


def mujoco_missing() -> str | None:
  """None where every module of the ``rl`` extra imports, else the message naming the fix."""
  for module in MUJOCO_MODULES:
    try:
      with contextlib.redirect_stdout(io.StringIO()):  # mjx prints a line per missing GPU backend
        importlib.import_module(module)
    except ImportError as error:
      return (f"MuJoCo (the rl extra) is not installed here ({module}: {error}); install it "
              f"with: {MUJOCO_INSTALL}")
  return None


def import_mujoco():
  """The ``mujoco`` module, or None where the ``rl`` extra is missing (for a test module's top
  level: its tests call :func:`require_mujoco` before they use it)."""
  if mujoco_missing() is not None:
    return None
  return importlib.import_module("mujoco")


def missing_parts_of(name: str) -> list[str]:
  """The messages of the parts that the task, distribution or system ``name`` needs and that are
  missing (``name`` as ``tests.every_system`` takes it: a task, or ``INNER/LOPT``; a
  distribution needs what its members need)."""
  import tasks
  from tasks.locomotion import policy_learning
  task = name.split("/")[0]
  members = ([(m.task, m.options) for m in tasks.build(task).members]
             if task in tasks.names("distribution") else [(task, {})])
  needs = []
  if any(t.startswith("fashion_mnist") or o.get("dataset") == "fashion_mnist" for t, o in members):
    needs.append(fashion_mnist_missing)
  if any(t in policy_learning.REGISTERED for t, _ in members):
    needs.append(mujoco_missing)
  return [message for message in (need() for need in needs) if message is not None]


def missing(message: str):
  """Skips the test (or module) with ``message``, or fails it under CI (see the module
  docstring)."""
  if in_ci():
    pytest.fail(f"{message} (CI={os.environ['CI']}: .ci/run installs it, so the setup is "
                "broken)", pytrace=False)
  pytest.skip(message)


def require_fashion_mnist() -> None:
  """Skips (or under CI fails) the test where FashionMNIST is missing."""
  message = fashion_mnist_missing()
  if message is not None:
    missing(message)


def require_mujoco() -> None:
  """Skips (or under CI fails) the test where the ``rl`` extra is missing."""
  message = mujoco_missing()
  if message is not None:
    missing(message)


def require_parts_of(name: str) -> None:
  """Skips (or under CI fails) the test where a part that ``name`` needs is missing."""
  messages = missing_parts_of(name)
  if messages:
    missing("; ".join(messages))
