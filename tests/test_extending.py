"""A user's own estimator and inner task, each one file plus its registration line, registered
from outside the package and trained through the ``meta-train`` command (the README's worked
example is these two files, word for word)."""

import importlib
import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import tasks
from lopt_meta.errors import ConfigError
from meta_train import estimators
from meta_train.command import build as build_lib
from meta_train.command import cli
from meta_train.command import config as config_lib
from meta_train.command import run as run_lib
from meta_train.command.logs import read_metrics

EXTENSION = Path(__file__).parent / "extension"
MODULES = ("tests.extension.clipped_nres", "tests.extension.linear_regression")


@pytest.fixture
def registered():
  """The two files imported (their registration lines run), and the registries as they were
  afterwards."""
  before = dict(tasks.TASKS), dict(estimators.ESTIMATORS)
  for name in MODULES:
    if name in sys.modules:
      importlib.reload(sys.modules[name])
    else:
      importlib.import_module(name)
  yield
  for registry, saved in zip((tasks.TASKS, estimators.ESTIMATORS), before):
    registry.clear()
    registry.update(saved)


TRAIN = ["train", "--task", "linear_regression", "--task-option", "dim", "4", "--horizon", "20",
         "--estimator", "clipped_nres", "--estimator-option", "max_norm", "0.05",
         "--num-particles", "4", "--sigma", "0.01", "--unroll-length", "5", "--outer-steps", "3",
         "--log-every", "1", "--eval-every", "0", "--wandb", "disabled"]


def test_a_new_estimator_and_inner_task_train_through_the_command(registered, tmp_path):
  out = tmp_path / "run"
  assert cli.main([*TRAIN, "--out", str(out)]) == 0
  saved = json.loads((out / "config.json").read_text())
  assert saved["task"]["task"] == "linear_regression"
  assert saved["estimator"]["estimator_option"] == {"max_norm": "0.05"}
  records = [r for r in read_metrics(out) if "grad_norm" in r]
  assert [r["step"] for r in records] == [1, 2, 3]
  assert all(0 < r["grad_norm"] <= 0.05 * (1 + 1e-6) for r in records)  # the option took effect
  assert run_lib.load_run(out).step == 3


def test_the_option_reaches_the_estimator_and_clipping_is_all_it_changes(registered):
  config = config_lib.TrainConfig.from_dict({
      "task": "linear_regression", "task_option": {"dim": "4"}, "horizon": 20,
      "estimator": "clipped_nres", "estimator_option": {"max_norm": "1e30"},
      "num_particles": 4, "sigma": 0.01, "unroll_length": 5})
  clipped = build_lib.build_run(config).estimator
  assert type(clipped).__name__ == "ClippedNRES" and clipped.max_norm == 1e30
  plain = estimators.NRES(clipped.system, num_particles=4, sigma=0.01, unroll_length=5)
  theta = clipped.system.theta0
  ws = clipped.init(jax.random.key(0), theta)
  assert jax.tree.all(jax.tree.map(np.array_equal, ws, plain.init(jax.random.key(0), theta)))
  got, want = clipped.estimate(jax.random.key(1), theta, ws)[0], plain.estimate(
      jax.random.key(1), theta, ws)[0]
  assert jax.tree.all(jax.tree.map(np.array_equal, got, want))  # a scale of exactly 1


def test_registration_errors(registered):
  with pytest.raises(ConfigError, match=r"^task: 'linear_regression' is already registered"):
    tasks.register("linear_regression", lambda: None)
  with pytest.raises(ConfigError, match=r"^task: cannot tell what 'anonymous' builds: annotate"
                     r".* or pass kind= \(one of: system, inner, distribution\)$"):
    tasks.register("anonymous", lambda *, width=3: None)
  with pytest.raises(ConfigError, match=r"^kind: unknown kind 'task'; valid: distribution, "
                     r"inner, system$"):
    tasks.register("anonymous", lambda *, width=3: None, kind="task")
  tasks.register("anonymous", lambda *, width=3: None, kind="inner")
  assert tasks.kind("anonymous") == "inner" and tasks.options("anonymous") == ["width"]
  with pytest.raises(ConfigError, match=r"^estimator: 'clipped_nres' is already registered"):
    estimators.register("clipped_nres", estimators.NRES)
  with pytest.raises(ConfigError, match=r"^max_norm: estimator 'clipped_nres' needs the option "
                     r"'max_norm'$"):
    estimators.make("clipped_nres", tasks.get("toy2d"), num_particles=4, sigma=0.1,
                    unroll_length=5)


def test_the_readme_shows_the_two_files_as_they_are():
  readme = (Path(__file__).parents[1] / "README.md").read_text()
  for name in ("clipped_nres.py", "linear_regression.py"):
    assert (EXTENSION / name).read_text() in readme, name
