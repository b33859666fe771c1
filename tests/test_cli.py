"""The meta-train command and the outer loop: outputs, bad input, non-finite estimates."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tasks
from meta_train import cli
from meta_train.estimators import NRES
from meta_train.trainer import Trainer

BASE = ["train", "--task", "toy2d", "--estimator", "nres", "--num-particles", "8", "--sigma", "0.1",
        "--unroll-length", "10", "--outer-steps", "40", "--outer-lr", "1e-2", "--seed", "0",
        "--log-every", "10", "--eval-every", "20"]


def test_train_writes_config_and_metrics(tmp_path):
  out = tmp_path / "run"
  assert cli.main(BASE + ["--out", str(out)]) == 0
  config = json.loads((out / "config.json").read_text())
  assert config["estimator"]["num_particles"] == 8 and config["task"]["task"] == "toy2d"
  records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [0, 10, 20, 30, 40]
  for r in records[1:]:
    for key in ("meta_loss", "grad_norm", "grad_variance", "nonfinite", "theta", "time_s",
                "total_unroll_steps"):
      assert key in r
    assert r["unroll_steps"] == 10 * 8 * 10  # 10 outer steps x N x W
  assert "eval_loss" in records[0] and "eval_loss" in records[2] and "eval_loss" in records[4]
  assert records[-1]["theta"] != records[0]["theta"]


def test_same_seed_same_run(tmp_path):
  for name in ("a", "b"):
    assert cli.main(BASE + ["--out", str(tmp_path / name)]) == 0
  thetas = [[json.loads(l)["theta"] for l in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
            for n in ("a", "b")]
  assert thetas[0] == thetas[1]


@pytest.mark.parametrize("flags, message", [
    (["--num-particles", "7"],
     "num_particles: must be even (N counts particles: N/2 antithetic pairs); got 7"),
    (["--sigma", "0"], "sigma: must be a positive finite number; got 0.0"),
    (["--outer-lr", "-1"], "outer_lr: must be a positive finite number; got -1.0"),
    (["--task", "lorenz63"],
     "task: unknown task 'lorenz63'; valid: cifar10_resnet, digits_mlp, fashion_mnist_mlp, "
     "fashion_mnist_mlp28, influence_balancing, lorenz, lstm_copy, toy2d"),
    (["--lopt", "mlp"], "lopt: applies to inner tasks (cifar10_resnet, digits_mlp, "
     "fashion_mnist_mlp, fashion_mnist_mlp28, lstm_copy), not to 'toy2d'"),
    (["--estimator", "es"],
     "estimator: unknown estimator 'es'; valid: full_es, gpes, nres, pes, tbptt, tes"),
    (["--unroll-length", "101"],
     "unroll_length: W=101 is longer than the horizon T=100 of 'toy2d'; allowed: 1..100"),
    (["--estimator", "gpes"], "K: gpes needs K, the steps per noise block (e.g. --K 100)"),
    (["--task-option", "horizn", "5"],
     "horizn: task 'toy2d' takes no option 'horizn'; valid: horizon, x0, theta0"),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, flags, message):
  out = tmp_path / "run"
  assert cli.main(BASE + ["--out", str(out)] + flags) == 2
  err = capsys.readouterr().err
  assert err == f"meta-train: error: {message}\n"
  assert not out.exists()  # nothing was created: the error came before any work


def test_existing_run_folder_is_not_overwritten(tmp_path, capsys):
  out = tmp_path / "run"
  assert cli.main(BASE + ["--out", str(out)]) == 0
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  assert cli.main(BASE + ["--out", str(out), "--seed", "1"]) == 2
  assert capsys.readouterr().err.endswith(
      "already holds a run; choose another --out or pass --overwrite\n")
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before
  assert cli.main(BASE + ["--out", str(out), "--seed", "1", "--overwrite"]) == 0
  assert json.loads((out / "config.json").read_text())["run"]["seed"] == 1


def test_nonfinite_estimates_never_reach_theta():
  """Losses of 3e38 tanh(theta) are finite (float32 max is 3.4e38), but their differences
  overflow to inf: every update is skipped, theta and the optimizer state stay put, and the
  skips are counted."""
  system = tasks.UnrolledSystem(init=lambda key: jnp.zeros(()),
                                step=lambda theta, s, key: (s, 3e38 * jnp.tanh(theta[0])), horizon=5)
  trainer = Trainer(NRES(system, num_particles=40, sigma=1.0, unroll_length=5), optax.adam(0.1))
  state = trainer.init(jax.random.key(0), jnp.zeros(1))
  new, metrics = trainer.run(state, 3)
  assert np.asarray(metrics["skipped_updates"]).tolist() == [1, 1, 1]
  assert float(new.theta[0]) == 0.0
  assert int(new.step) == 3
  for a, b in zip(jax.tree.leaves(new.opt_state), jax.tree.leaves(state.opt_state)):
    np.testing.assert_array_equal(a, b)


def test_outer_loop_descends_lorenz():
  system = tasks.get("lorenz", horizon=200)
  trainer = Trainer(NRES(system, num_particles=40, sigma=0.04, unroll_length=20), optax.adam(0.02))
  state = trainer.init(jax.random.key(0), system.theta0)
  before = float(system.mean_loss(system.theta0, jax.random.key(1)))
  state, _ = trainer.run(state, 150)
  assert float(system.mean_loss(state.theta, jax.random.key(1))) < 0.5 * before
