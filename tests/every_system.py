"""Runs ``init`` + one ``estimate`` of every estimator, with 2 antithetic pairs (and then with 4,
for the systems in ``FOUR_PAIRS``), on the systems named on the command line, exactly as
``meta-train train`` builds them.

    python -m tests.every_system lorenz digits_mlp/adam cifar10_resnet
    python -m tests.every_system -      # the names one a line on stdin, as they come

A name is a registered unrolled system (``tasks.names("system")``) or an inner task with a learned optimizer
(``INNER/LOPT``; ``INNER`` alone means ``INNER/mlp``). Inner tasks keep their default model and
run with a horizon of 8 steps and windows of 4 (so do the policy-learning tasks, the copy task,
with an LSTM of 8 units, and the hyperparameter tasks, these on the digits data with small MLPs), except ``cifar10_resnet``: one stage of width 8,
batches of 1, a horizon of 4 and windows of 2 (the full ResNet-8 costs minutes per combination
on 2 cores; ``tests/test_preflight.py`` checks the full model's programs), on a random dataset in
the ``cifar-10-batches-py`` format (there is no CIFAR-10 to be had offline). Each combination prints
``start NAME ESTIMATOR PAIRS`` before it and ``done NAME ESTIMATOR PAIRS SECONDS`` after it, so a
caller that runs this with a time limit can tell which one hung (``tests/test_no_hangs.py``); a
combination the configuration refuses (FullES on a system that never resets) prints ``skip ...``
with the error; ``finished NAME`` follows a name's last combination. Read from stdin, one
process runs name after name (what ``tests/test_no_hangs.py`` does: each system then costs its
own compilations, not a Python and JAX start).
"""

from __future__ import annotations

import pickle
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

import lopt_meta
import tasks
from lopt_meta.errors import ConfigError
from meta_train.command import build as build_lib
from meta_train.command import config as config_lib
from meta_train.engine import estimators
from tasks.locomotion import policy_learning

UNROLL_LENGTH = 4
INNER_HORIZON = 8
# Two pairs are the fewest that batch a pair axis (lstm_copy's LAPACK hang came with two or more;
# tests/test_preflight.py checks every system's batched programs for LAPACK calls). A larger
# batch runs the same programs at another size, so 4 pairs run only where the batch size reaches
# past the program: the MuJoCo engine's thread pool (a thread per simulation, up to the cores),
# on the task that can terminate.
PAIRS = (2,)
FOUR_PAIRS = ("hopper",)

# Every registered task (inner tasks with the default learned optimizer), and every learned
# optimizer on one inner task. The general image_mlp and image_autoencoder build the very models
# of digits_mlp (an MLP on the same data; the autoencoder differs in its loss alone), so they run
# here as digits_mlp does; image_conv, a new structure, runs.
SAME_AS_DIGITS_MLP = ("image_mlp", "image_autoencoder")
NAMES = (tasks.names("system")
         + [f"{t}/mlp" for t in tasks.names("inner") if t not in SAME_AS_DIGITS_MLP]
         + [f"digits_mlp/{o}" for o in sorted(lopt_meta.OPTIMIZERS) if o != "mlp"])


def fake_cifar10(root: Path, per_file: int = 50) -> str:
  """A random dataset in the layout of ``cifar-10-batches-py`` under ``root``; returns ``root``."""
  folder = root / "cifar-10-batches-py"
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    batch = {b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
             b"labels": [int(x) for x in rng.integers(0, 10, per_file)]}
    with open(folder / name, "wb") as f:
      pickle.dump(batch, f)
  return str(root)


def configs(name: str, estimator: str, pairs: int, scratch: Path, *,
            full_model: bool = False) -> config_lib.TrainConfig:
  """The run configuration of one combination (see the module docstring; ``full_model``: the
  registered ``cifar10_resnet`` as it is)."""
  task, _, lopt = name.partition("/")
  small = task == "cifar10_resnet" and not full_model
  W, T = (UNROLL_LENGTH // 2, INNER_HORIZON // 2) if small else (UNROLL_LENGTH, INNER_HORIZON)
  settings = {"task": task, "estimator": estimator, "num_particles": 2 * pairs, "sigma": 0.01,
              "unroll_length": W}
  if estimator == "gpes":
    settings["estimator_option"] = {"K": 2 * W}
  if tasks.kind(task) == "inner":
    settings.update(horizon=T, lopt=lopt or "mlp")
  if task in policy_learning.REGISTERED:
    settings["horizon"] = T
  if task == "lr_decay_schedule":
    settings.update(horizon=T, task_option={"dataset": "digits", "hidden_sizes": "[16]"})
  if task == "rnn_copy":
    settings.update(horizon=T, task_option={"hidden_size": "8", "batch_size": "4"})
  if task == "many_hparams":
    settings.update(horizon=T, task_option={"dataset": "digits", "num_hidden": "2",
                                            "max_units": "16"})
  if task == "cifar10_resnet":
    settings["data_dir"] = fake_cifar10(scratch)
  if small:
    settings["task_option"] = {"batch_size": "1", "widths": "[8]"}
  if task == "image_conv":
    settings["task_option"] = {"batch_size": "8", "channels": "[4]"}
  return config_lib.TrainConfig.from_dict(settings)


def pairs_of(name: str) -> tuple[int, ...]:
  """The numbers of antithetic pairs every estimator of ``name`` runs with."""
  return PAIRS + (4,) if name in FOUR_PAIRS else PAIRS


def run(name: str, scratch: Path) -> None:
  """Every combination of ``name`` (see the module docstring), then ``finished NAME``."""
  for estimator in estimators.ESTIMATORS:
    for pairs in pairs_of(name):
      try:
        system, est, _ = build_lib.build_run(configs(name, estimator, pairs, scratch))
      except ConfigError as e:  # e.g. full_es on a system that never resets
        print(f"skip {name} {estimator} {pairs}: {e}", flush=True)
        continue
      print(f"start {name} {estimator} {pairs}", flush=True)
      start = time.perf_counter()
      ws = est.init(jax.random.key(0), system.theta0)
      grad, ws, metrics = est.estimate(jax.random.key(1), system.theta0, ws)
      jax.block_until_ready((grad, ws, metrics))
      if jax.tree.structure(grad) != jax.tree.structure(system.theta0):
        raise AssertionError(f"{name} {estimator}: the estimate is not shaped like theta")
      print(f"done {name} {estimator} {pairs} {time.perf_counter() - start:.1f}", flush=True)
  print(f"finished {name}", flush=True)


def main(names: list[str]) -> None:
  with tempfile.TemporaryDirectory() as scratch:
    if names == ["-"]:
      names = (line.strip() for line in sys.stdin if line.strip())
    for name in names:
      run(name, Path(scratch))


if __name__ == "__main__":
  main(sys.argv[1:])
