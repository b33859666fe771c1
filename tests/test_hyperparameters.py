"""Hyperparameter optimization: transforms, nested dropout, the systems, the searches, export."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tasks
from lopt_meta.errors import ConfigError
from meta_train.command import build as build_lib
from meta_train.command import cli
from meta_train.command import hpo_plots
from tasks.hpo import search
from tasks.hpo import paper_tasks as hparam_tuning
from tasks import hpo as hp
from tasks.image_tasks import ImageClassification
from tasks.models import MLP

SPACE = {"lr": hp.LogUniform(1e-4, 1e-2), "momentum": hp.Logit(0.01, 0.9),
         "width_1": hp.Fraction(0.2, 0.8), "shift": hp.Uniform(-1.0, 2.0)}


# ---------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(SPACE))
def test_transforms_map_the_declared_range_and_back(name):
  t = SPACE[name]
  low_u, high_u = t.bounds
  assert float(t.forward(jnp.float32(low_u))) == pytest.approx(t.low, rel=1e-6)
  assert float(t.forward(jnp.float32(high_u))) == pytest.approx(t.high, rel=1e-6)
  x = jnp.linspace(t.low, t.high, 7)[1:-1]
  np.testing.assert_allclose(t.forward(t.inverse(x)), x, rtol=1e-6)
  expected = {"lr": (math.log(1e-4), math.log(1e-2)),
              "momentum": (math.log(0.01 / 0.99), math.log(0.9 / 0.1)),
              "width_1": (math.log(0.2 / 0.8), math.log(0.8 / 0.2)), "shift": (-1.0, 2.0)}[name]
  assert t.bounds == pytest.approx(expected, rel=1e-12)


def test_sample_is_uniform_in_unconstrained_units_within_the_ranges():
  draws = jax.vmap(lambda k: hp.sample(SPACE, k))(jax.random.split(jax.random.key(0), 4000))
  hparams = hp.constrain(SPACE, draws)
  for name, t in SPACE.items():
    low, high = t.bounds
    u = np.asarray(draws[name])
    assert u.min() >= low and u.max() <= high
    assert np.all(np.asarray(hparams[name]) >= t.low * (1 - 1e-6))
    assert np.all(np.asarray(hparams[name]) <= t.high * (1 + 1e-6))
    # The mean of U(low, high) has standard error (high - low) / sqrt(12 n): 5 of them.
    assert abs(u.mean() - (low + high) / 2) < 5 * (high - low) / math.sqrt(12 * 4000)
  assert hp.centre(SPACE)["lr"] == pytest.approx(math.log(1e-3), rel=1e-6)


@pytest.mark.parametrize("fraction", [0.0, 0.004, 0.006, 0.2, 0.205, 0.215, 0.5, 0.123, 0.777, 0.995, 1.0])
def test_nested_dropout_keeps_exactly_round_fraction_times_units(fraction):
  mask = np.asarray(hp.nested_dropout_mask(jnp.float32(fraction), 100))
  kept = min(max(round(float(np.float32(fraction) * np.float32(100))), 1), 100)
  assert mask.sum() == kept
  np.testing.assert_array_equal(mask, np.arange(100) < kept)  # the first units, then none


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("space, message", [
    ({}, "space: declare at least one hyperparameter, e.g. {'lr': LogUniform(1e-4, 1e-2)}"),
    ({"lr": hp.LogUniform(1e-2, 1e-4)}, "lr: LogUniform needs low < high; got low=0.01, high=0.0001"),
    ({"lr": hp.LogUniform(0.0, 1e-2)},
     "lr: LogUniform is a log scale and needs 0 < low < high; got low=0.0, high=0.01"),
    ({"lr": hp.LogUniform(-1.0, 1e-2)},
     "lr: LogUniform is a log scale and needs 0 < low < high; got low=-1.0, high=0.01"),
    ({"m": hp.Logit(0.5, 0.5)}, "m: Logit needs low < high; got low=0.5, high=0.5"),
    ({"m": hp.Logit(0.5, 1.0)}, "m: Logit maps to (0, 1) and needs 0 < low < high < 1; got low=0.5, high=1.0"),
    ({"w": hp.Fraction(0.0, 0.8)},
     "w: Fraction maps to (0, 1) and needs 0 < low < high < 1; got low=0.0, high=0.8"),
    ({"lr": (1e-4, 1e-2)}, "lr: must be a transform (Uniform, LogUniform, Logit or Fraction); got tuple"),
    ({"x": hp.Uniform(0.0, float("inf"))}, "x: Uniform needs finite numbers low, high; got low=0.0, high=inf"),
])
def test_bad_declarations_get_one_error_naming_the_hyperparameter(space, message):
  with pytest.raises(ConfigError) as err:
    hp.hparam_system(space, lambda key: 0.0, lambda h, s, k: (s, 0.0), horizon=4)
  assert str(err.value) == message


def test_unknown_or_missing_hyperparameter_names_are_errors():
  space = {"lr": hp.LogUniform(1e-4, 1e-2), "momentum": hp.Logit(0.01, 0.9)}
  make = lambda **kw: hp.hparam_system(space, lambda key: 0.0, lambda h, s, k: (s, 0.0), horizon=4, **kw)
  with pytest.raises(ConfigError, match=r"^theta0: unknown hyperparameter 'lrr'; declared: lr, momentum$"):
    make(theta0={"lrr": 1e-3, "momentum": 0.9})
  with pytest.raises(ConfigError, match=r"^theta0: missing hyperparameter\(s\) 'momentum'; declared: lr, momentum$"):
    make(theta0={"lr": 1e-3})
  with pytest.raises(ConfigError, match="^init_seed: give theta0"):
    make(theta0={"lr": 1e-3, "momentum": 0.9}, init_seed=0)
  system = make()
  with pytest.raises(ConfigError, match=r"^points: unknown hyperparameter 'mom'; declared: lr, momentum$"):
    search.grid_search(system, points={"mom": 3}, key=jax.random.key(0))
  with pytest.raises(ConfigError, match=r"^budget: must cover at least one trial \(1 x T=4 = 4 inner steps\); got 3$"):
    search.random_search(system, budget=3, key=jax.random.key(0))
  with pytest.raises(ConfigError, match="^task: system 'lorenz' has no declared hyperparameters"):
    search.random_search(tasks.get("lorenz"), budget=3000, key=jax.random.key(0))
  with pytest.raises(ConfigError, match="^meta_loss: unknown meta_loss 'final'; valid: train, valid, telescoping$"):
    hp.optax_system(space, lambda h: optax.sgd(h["lr"]), tasks.build("digits_mlp"),
                    horizon=4, meta_loss="final")


def test_cli_errors_for_hyperparameter_tasks(capsys):
  assert cli.main(["search", "--task", "lr_decay_schedule", "--task-option", "dataset", "digits"]) == 2
  assert capsys.readouterr().err.strip() == (
      "meta-train: error: budget: random search needs --budget (inner steps to spend)")
  assert cli.main(["train", "--task", "lr_decay_schedule", "--task-option", "dataset", "mnist"]) == 2
  assert capsys.readouterr().err.strip() == (
      "meta-train: error: dataset: unknown dataset 'mnist'; valid: fashion_mnist, digits")


# ---------------------------------------------------------------------------------------------
# Systems
# ---------------------------------------------------------------------------------------------

def test_optax_system_gives_the_losses_of_the_loop_written_by_hand():
  """lr_decay_schedule (optax.sgd with momentum over the schedule) against SGD with momentum and
  alpha_t = theta_0 / (1 + t/Q)^theta_1 written out, on the same batches."""
  T, Q = 12, 7.0
  system = tasks.get("lr_decay_schedule", horizon=T, Q=Q, dataset="digits", hidden_sizes=[16],
                     lr=0.05, decay=1.5)
  task = ImageClassification("hand", "digits", MLP((16,), 10), batch_size=100)
  key = jax.random.key(3)
  losses = np.asarray(system.episode_losses(system.theta0, key))

  init_key, _ = jax.random.split(key)
  _, _, k_params, k_state, _ = jax.random.split(init_key, 5)  # index, length, params, state, fixed
  params, data_state = task.init_params(k_params), task.init_state(k_state)
  velocity = jax.tree.map(jnp.zeros_like, params)
  lr, decay = float(jnp.exp(system.theta0["lr"])), float(jnp.exp(system.theta0["decay"]))
  assert lr == pytest.approx(0.05, rel=1e-6) and decay == pytest.approx(1.5, rel=1e-6)
  hand = []
  for t in range(T):
    batch, data_state = task.train_batch(task.data, data_state, None)
    loss, grads = jax.value_and_grad(task.loss)(params, batch)
    hand.append(float(task.normalize(loss)))
    velocity = jax.tree.map(lambda g, v: g + 0.9 * v, grads, velocity)
    alpha = lr / (1 + t / Q) ** decay
    params = jax.tree.map(lambda p, v: p - alpha * v, params, velocity)
  np.testing.assert_allclose(losses, hand, rtol=2e-5, atol=2e-6)
  assert hand[-1] < hand[0] - 0.1  # it trains: the comparison is not between two constant runs


def test_telescoping_sum_is_the_final_loss_on_the_fixed_batch():
  T = 10
  system = tasks.get("lr_decay_schedule", horizon=T, dataset="digits", hidden_sizes=[16],
                     meta_loss="telescoping", fixed_batch_size=300, lr=0.1, decay=0.5).bound()
  init_key, steps_key = jax.random.split(jax.random.key(0))
  state0 = system.init(init_key)
  final, losses = system.unroll(system.theta0, state0, jax.random.split(steps_key, T))
  task = ImageClassification("x", "digits", MLP((16,), 10), batch_size=100)
  fixed = task.eval_batch(task.data, "train", jax.random.wrap_key_data(state0.fixed_key),
                          batch_size=300)
  assert fixed["label"].shape == (300,)
  final_loss = float(task.normalize(task.loss(final.params, fixed)))
  assert float(jnp.sum(losses)) == pytest.approx(final_loss, rel=1e-5)
  assert float(final.previous) == final_loss
  keys = jax.random.split(steps_key, T)
  first, _ = system.unroll(system.theta0, state0, keys[:1])
  # l_{-1} = 0: the first term is the loss itself, not a difference.
  assert float(losses[0]) == pytest.approx(float(task.normalize(task.loss(first.params, fixed))),
                                           rel=1e-6)


def test_many_hparams_declares_29_and_masks_the_dropped_units():
  system = tasks.get("many_hparams", horizon=5, dataset="digits", init_seed=None)
  assert len(system.theta0) == 29 and system.space == hparam_tuning.many_hparams_space(5)
  assert sum(isinstance(t, hp.Fraction) for t in system.space.values()) == 5
  theta = dict(system.theta0)
  theta["width_2"] = jnp.float32(hp.Fraction(0.2, 0.8).inverse(0.3))  # 30 of 100 units
  theta.update({k: jnp.float32(math.log(0.05)) for k in theta if k.startswith("lr_")})
  bound = system.bound()
  state0 = bound.init(jax.random.key(0))
  final, losses = bound.unroll(theta, state0, jax.random.split(jax.random.key(1), 5))
  before, after = state0.params["Dense_2"]["kernel"], final.params["Dense_2"]["kernel"]
  # Layer 2's units past 30 carry no signal: the weights out of them never change ...
  np.testing.assert_array_equal(after[30:], before[30:])
  assert not np.array_equal(after[:30], before[:30])
  # ... nor do the weights into them (the mask zeroes their gradient).
  np.testing.assert_array_equal(final.params["Dense_1"]["kernel"][:, 30:],
                                state0.params["Dense_1"]["kernel"][:, 30:])
  assert np.all(np.isfinite(losses))


# ---------------------------------------------------------------------------------------------
# Searches
# ---------------------------------------------------------------------------------------------

def test_random_search_spends_the_budget_exactly_as_runs_count_it():
  T = 6
  system = tasks.get("lr_decay_schedule", horizon=T, dataset="digits", hidden_sizes=[8])
  # An NRES run of N=4, W=3 for 5 updates in lockstep logs 4 * 3 * 5 = 60 inner steps; a random
  # search given that budget with 2 episodes per trial runs 60 // 12 = 5 trials.
  key = jax.random.key(7)
  result = search.random_search(system, budget=4 * 3 * 5 + 11, key=key, episodes=2, chunk=3)
  np.testing.assert_array_equal(result.compute, [12, 24, 36, 48, 60])
  assert result.compute.dtype == np.int64
  for i in (0, 4):  # each trial is the system's objective at its draw, on its own runs
    theta = hp.sample(system.space, jax.random.fold_in(key, 2 * i))
    assert {k: float(v[i]) for k, v in result.theta.items()} == {k: float(v) for k, v in theta.items()}
    expected = system.bound().mean_loss(theta, jax.random.fold_in(key, 2 * i + 1), num_episodes=2)
    assert result.objective[i] == pytest.approx(float(expected), rel=1e-5)
  np.testing.assert_array_equal(result.best_so_far, np.minimum.accumulate(result.objective))


def test_grid_search_lays_the_points_over_the_ranges():
  system = tasks.get("lr_decay_schedule", horizon=4, dataset="digits", hidden_sizes=[8])
  grid = search.grid_search(system, points={"lr": 3, "decay": 2}, key=jax.random.key(0))
  np.testing.assert_allclose(grid.axes["lr"], np.linspace(math.log(1e-3), math.log(10 ** -0.5), 3),
                             rtol=1e-6)
  np.testing.assert_allclose(grid.axes["decay"], [math.log(1e-2), math.log(1e2)], rtol=1e-6)
  assert grid.objective.shape == (3, 2) and grid.compute == 3 * 2 * 4
  theta = {"lr": jnp.float32(grid.axes["lr"][2]), "decay": jnp.float32(grid.axes["decay"][0])}
  assert grid.objective[2, 0] == pytest.approx(float(system.bound().mean_loss(
      theta, jax.random.key(0))), rel=1e-5)


def test_best_so_far_bands_over_seeds(tmp_path):
  for seed, losses in enumerate(([3.0, 2.0, 2.5, 1.0], [4.0, 1.5, 1.8, 1.2])):
    run = tmp_path / f"nres-seed{seed}"
    run.mkdir()
    with open(run / "metrics.jsonl", "w") as f:
      for i, loss in enumerate(losses):
        f.write(json.dumps({"step": i * 10, "eval_loss": loss, "total_unroll_steps": 100 * i}) + "\n")
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots()
  summary = hpo_plots.draw_best_so_far(ax, [tmp_path / "nres-seed0", tmp_path / "nres-seed1"])
  plt.close(fig)
  assert summary == {"nres": {"compute": 300.0, "mean": 1.1, "min": 1.0, "max": 1.2}}
  x, best = hpo_plots.best_so_far(tmp_path / "nres-seed1")
  np.testing.assert_array_equal(best, [4.0, 1.5, 1.5, 1.2])


# ---------------------------------------------------------------------------------------------
# From the command line, and the export
# ---------------------------------------------------------------------------------------------

def test_train_export_search_and_plot_from_the_command_line(tmp_path, capsys, monkeypatch):
  task = ["--task", "lr_decay_schedule", "--task-option", "dataset", "digits",
          "--task-option", "hidden_sizes", "[8]", "--horizon", "20"]
  run = tmp_path / "run"
  assert cli.main(["train", *task, "--estimator", "nres", "--num-particles", "4",
                   "--unroll-length", "5", "--outer-steps", "8", "--lockstep", "--eval-every", "4",
                   "--log-every", "4", "--wandb", "disabled", "--out", str(run)]) == 0
  with monkeypatch.context() as m:  # the space and constants are read from the checkpoint
    m.setattr(build_lib, "build_system", lambda *a, **k: pytest.fail("export built the task"))
    assert cli.main(["export", str(run), "--out", str(tmp_path / "h.json")]) == 0
  exported = json.loads((tmp_path / "h.json").read_text())
  assert exported["task"] == "lr_decay_schedule" and exported["Q"] == 20.0 and exported["step"] == 8
  for name in ("lr", "decay"):
    assert exported["hyperparameters"][name] == pytest.approx(math.exp(exported["theta"][name]), rel=1e-6)
  schedule = hparam_tuning.schedule_from_json(tmp_path / "h.json")
  h = exported["hyperparameters"]
  assert float(schedule(10)) == pytest.approx(h["lr"] / (1 + 10 / 20) ** h["decay"], rel=1e-6)
  assert cli.main(["search", *task, "--budget", "100", "--out", str(tmp_path / "random")]) == 0
  records = [json.loads(line) for line in (tmp_path / "random" / "metrics.jsonl").read_text().splitlines()]
  assert [r["total_unroll_steps"] for r in records] == [20, 40, 60, 80, 100]
  assert cli.main(["search", *task, "--method", "grid", "--points", "lr", "3", "decay", "2",
                   "--out", str(tmp_path / "grid.npz")]) == 0
  assert search.read_grid(tmp_path / "grid.npz").objective.shape == (3, 2)
  capsys.readouterr()
  assert cli.main(["plot", str(run), str(tmp_path / "random"), "--out", str(tmp_path / "p.png"),
                   "--landscape", str(tmp_path / "grid.npz")]) == 0
  assert (tmp_path / "p.png").stat().st_size > 0 and (tmp_path / "p-hpo.png").stat().st_size > 0
  assert cli.main(["export", str(run), "--out", str(tmp_path / "h.json")]) == 2  # no overwrite
