"""The meta-train command and the outer loop: outputs, bad input, non-finite estimates."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tasks
from meta_train.command import cli
from meta_train.estimators import NRES
from meta_train.engine.trainer import Trainer

BASE = ["train", "--task", "toy2d", "--estimator", "nres", "--num-particles", "8", "--sigma", "0.1",
        "--unroll-length", "10", "--outer-steps", "40", "--outer-lr", "1e-2", "--seed", "0",
        "--log-every", "10", "--eval-every", "20", "--wandb", "disabled"]


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
     "task: unknown task 'lorenz63'; valid: cifar10_resnet, digits_mix, digits_mlp, "
     "fashion_mnist_mlp, fashion_mnist_mlp28, halfcheetah, hopper, image_autoencoder, "
     "image_conv, image_mlp, "
     "influence_balancing, lorenz, lr_decay_schedule, lstm_copy, many_hparams, rnn_copy, "
     "small_mix, swimmer, toy2d, walker2d"),
    (["--lopt", "mlp"], "lopt: applies to inner tasks (cifar10_resnet, digits_mlp, "
     "fashion_mnist_mlp, fashion_mnist_mlp28, image_autoencoder, image_conv, image_mlp, "
     "lstm_copy), not to 'toy2d'"),
    (["--task", "digits_mlp", "--lopt", "bogus"],
     "lopt: unknown lopt 'bogus'; valid: adafac, adam, anchored_adam, hyper_adam, lr_schedule, mlp, nominal_mlp, sgdm"),
    (["--estimator", "es"],
     "estimator: unknown estimator 'es'; valid: full_es, gpes, nres, pes, tbptt, tes"),
    (["--unroll-length", "101"],
     "unroll_length: W=101 is longer than the horizon T=100 of 'toy2d'; allowed: 1..100"),
    (["--estimator", "gpes"], "K: estimator 'gpes' needs the option 'K'"),
    (["--estimator-option", "K", "3"], "K: estimator 'nres' takes no option 'K'; valid: "
     "num_particles, sigma, unroll_length, lockstep, devices"),
    (["--estimator", "gpes", "--estimator-option", "K", "0"],
     "K: must be a positive int (steps per noise block); got 0"),
    (["--task-option", "horizn", "5"],
     "horizn: task 'toy2d' takes no option 'horizn'; valid: horizon, x0, theta0"),
    (["--task", "digits_mlp", "--lopt", "sgdm"],
     "lopt: 'sgdm' has no meta-parameters (a fixed optimizer, for comparison): nothing to "
     "meta-train; learned optimizers: adafac, anchored_adam, hyper_adam, lr_schedule, mlp, nominal_mlp"),
    (["--stop-grace-s", "0"], "stop_grace_s: must be a positive finite number; got 0.0"),
    (["--stall-warning-s", "nan"], "stall_warning_s: must be a positive finite number; got nan"),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, flags, message):
  out = tmp_path / "run"
  assert cli.main(BASE + ["--out", str(out)] + flags) == 2
  err = capsys.readouterr().err
  assert err == f"meta-train: error: {message}\n"
  assert not out.exists()  # nothing was created: the error came before any work


def test_a_value_outside_a_flags_choices_is_refused_by_the_parser(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_:
    cli.main(BASE + ["--out", str(tmp_path / "run"), "--wandb", "sometimes"])
  assert exit_.value.code == 2
  err = " ".join(capsys.readouterr().err.split())
  assert "invalid choice 'sometimes' for argument '--wandb'" in err
  assert all(f"'{mode}'" in err for mode in ("disabled", "offline", "online"))
  assert not (tmp_path / "run").exists()


def _tree(folder):
  return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_existing_run_folder_is_not_overwritten(tmp_path, capsys):
  out = tmp_path / "run"
  assert cli.main(BASE + ["--out", str(out), "--checkpoint-every", "10"]) == 0
  before = _tree(out)
  capsys.readouterr()
  assert cli.main(BASE + ["--out", str(out), "--seed", "1"]) == 2
  assert capsys.readouterr().err == (
      f"meta-train: error: out: run folder {out} already holds a different run; resume it with "
      f"'meta-train resume {out}', choose another --out, or pass --overwrite\n")
  assert _tree(out) == before
  assert cli.main(BASE + ["--out", str(out), "--seed", "1", "--outer-steps", "20",
                          "--checkpoint-every", "10", "--overwrite"]) == 0
  assert json.loads((out / "config.json").read_text())["run"]["seed"] == 1
  assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["10", "20"]
  assert [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [
      0, 10, 20]


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


# ---------------------------------------------------------------------------------------------
# The other commands' bad input: one line, exit 2, nothing touched.
# ---------------------------------------------------------------------------------------------

def _one_line_error(capsys, args, message):
  assert cli.main(args) == 2
  assert capsys.readouterr().err == f"meta-train: error: {message}\n"


def test_resume_eval_export_need_a_run_folder(tmp_path, capsys):
  missing = tmp_path / "nowhere"
  for command in (["resume", str(missing)], ["eval", str(missing)],
                  ["export", str(missing), "--out", str(tmp_path / "x.npz")]):
    _one_line_error(capsys, command, f"run_dir: {missing} is not a run folder (no config.json)")


def test_run_folder_without_checkpoint(tmp_path, capsys):
  out = tmp_path / "empty"
  out.mkdir()
  (out / "config.json").write_text(json.dumps({"task": {"task": "lorenz", "horizon": 100},
                                               "estimator": {"num_particles": 4, "unroll_length": 10}}))
  _one_line_error(capsys, ["resume", str(out)],
                  f"checkpoint: no checkpoint in {out.resolve()}/checkpoints")


def test_export_of_a_run_without_a_learned_optimizer(tmp_path, capsys):
  out = tmp_path / "lorenz"
  assert cli.main(BASE + ["--outer-steps", "10", "--out", str(out), "--wandb", "disabled"]) == 0
  capsys.readouterr()
  _one_line_error(capsys, ["export", str(out), "--out", str(tmp_path / "x.npz")],
                  f"run_dir: {out} trained theta of 'toy2d', neither a learned optimizer nor "
                  "hyperparameters; nothing to export")


def test_config_file_with_overrides(tmp_path):
  config = tmp_path / "run.yaml"
  config.write_text("task: toy2d\nnum_particles: 6\nouter:\n  outer_steps: 10\n  outer_lr: 0.02\n"
                    "run:\n  log_every: 5\n  eval_every: 0\n  wandb: disabled\n")
  out = tmp_path / "r"
  assert cli.main(["train", "--config", str(config), "--num-particles", "4", "--out", str(out)]) == 0
  saved = json.loads((out / "config.json").read_text())
  assert saved["estimator"]["num_particles"] == 4  # the flag wins over the file
  assert saved["outer"]["outer_lr"] == 0.02 and saved["outer"]["outer_steps"] == 10


def test_bad_config_file(tmp_path, capsys):
  config = tmp_path / "bad.yaml"
  config.write_text("num_particle: 6\n")
  assert cli.main(["train", "--config", str(config)]) == 2
  err = capsys.readouterr().err
  assert err.startswith("meta-train: error: num_particle: unknown setting 'num_particle'; valid: ")
  assert err.count("\n") == 1
  _one_line_error(capsys, ["train", "--config", str(tmp_path / "none.yaml")],
                  f"config: no such file: {tmp_path / 'none.yaml'}")


def test_every_command_has_help(capsys):
  for command in ("train", "resume", "eval", "export", "plot"):
    with pytest.raises(SystemExit) as exit_:
      cli.main([command, "--help"])
    assert exit_.value.code == 0
    assert f"usage: meta-train {command}" in capsys.readouterr().out
