"""Task distributions: the inner-training core's augmentations, the OverTasks estimator, the
declaration (Python, YAML, --task NAME), and exact resume of a multi-task run.

The quick tier (``-m "not slow"``) draws members of three state structures that are small analytic
systems; the ``slow`` tests draw a learned optimizer's MLP, CNN and LSTM tasks, add PES's
one-member distribution and the multi-task run's exact resume."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

import lopt_meta
import tasks
from lopt_meta.errors import ConfigError
from meta_train.command import cli
from meta_train.command import build as build_lib
from meta_train.command import config as config_lib
from meta_train.command import run as run_lib
from meta_train.estimators import NRES, PES, OverTasks
from tests.trees import assert_trees_equal, assert_trees_within_ulps_of_scale


def _digits_system(**kw):
  task = tasks.build("image_mlp", dataset="digits", hidden_sizes=(8,), batch_size=32)
  return tasks.learned_optimizer_system(task, lopt_meta.MLPLOpt(), horizon=kw.pop("horizon", 20),
                                        **kw)


# ---------------------------------------------------------------------------------------------
# The core's augmentations
# ---------------------------------------------------------------------------------------------

def test_reparameterization_changes_what_the_optimizer_sees_not_the_loss():
  """Under param_scale the optimizer's parameters are ``c p`` per tensor (c in the range) and
  its gradients ``g / c``; the model reads ``p``: the first training loss is the plain one."""
  task = tasks.build("image_mlp", dataset="digits", hidden_sizes=(8,), batch_size=32)
  sgd = lopt_meta.SGDM(learning_rate=0.0, momentum=0.0)
  plain = tasks.learned_optimizer_system(task, sgd, horizon=5).bound()
  scaled = tasks.learned_optimizer_system(task, sgd, horizon=5,
                                          augment=tasks.Augmentation(param_scale=(1e-3, 1e3))
                                          ).bound()
  key = jax.random.key(4)
  s0, t0 = plain.init(key), scaled.init(key)
  factors = jax.tree.leaves(t0.scales)
  assert all(1e-3 <= float(c) <= 1e3 for c in factors) and max(factors) / min(factors) > 10
  for p, q, c in zip(jax.tree.leaves(s0.params), jax.tree.leaves(t0.params), factors):
    np.testing.assert_allclose(np.asarray(q), np.asarray(p) * float(c), rtol=1e-6)
  (_, l_plain), (_, l_scaled) = plain.step({}, s0, key), scaled.step({}, t0, key)
  assert float(l_scaled) == pytest.approx(float(l_plain), rel=1e-5)


def test_label_noise_changes_the_configured_fraction_of_training_labels():
  task = tasks.build("image_mlp", dataset="digits", hidden_sizes=(8,), batch_size=1000)
  batch, _ = task.train_batch(task.data, task.init_state(jax.random.key(0)), None)

  def changed(noise):
    noisy = tasks.Augmentation(label_noise=noise).relabel(batch, jax.random.key(1), 10)
    return float(jnp.mean(noisy["label"] != batch["label"]))
  # a label is replaced w.p. p and the new one differs w.p. 9/10: 0.27 of 1000 at p = 0.3
  # (binomial sd 0.014)
  assert changed(0.3) == pytest.approx(0.3 * 0.9, abs=0.05)
  assert changed(0.0) == 0.0
  with pytest.raises(ConfigError, match="^label_noise: must be a probability in"):
    tasks.Augmentation(label_noise=1.5).check()


# ---------------------------------------------------------------------------------------------
# OverTasks
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [NRES, pytest.param(PES, marks=pytest.mark.slow)])
def test_one_member_distribution_is_the_single_task_estimate(kind):
  """A distribution of one task gives that task's estimator's estimates, worker states and
  metrics (the weight is 1, not computed): positions, counters and keys bitwise, floats to
  within 16 ulps of each leaf's largest magnitude. The same computation compiled in another
  program rounds differently: the noise and the inner states already differ by an ulp after one
  window, the differences add up over three windows, and an element near zero differs by many
  of its own ulps (any real difference, a weight, a key, a member's state, is orders of
  magnitude larger)."""
  system = _digits_system()
  single = kind(system, num_particles=4, sigma=0.01, unroll_length=5)
  over = OverTasks({"only": kind(system, num_particles=4, sigma=0.01, unroll_length=5)})
  theta = system.theta0
  key = jax.random.key(7)
  ws_over = over.init(key, theta)
  ws_single = single.init(jax.random.split(key, 1)[0], theta)
  for a, b in zip(jax.tree.leaves(ws_over.members[0]), jax.tree.leaves(ws_single)):  # burned in
    if not jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  ws_over = ws_over.replace(members=(ws_single,))
  for i in range(3):
    k = jax.random.key(100 + i)
    g_over, ws_over, m_over = over.estimate(k, theta, ws_over)
    window_key = jax.random.split(jax.random.split(k)[1], 1)[0]
    g_single, ws_single, m_single = single.estimate(window_key, theta, ws_single)
    assert_trees_within_ulps_of_scale(g_over, g_single)
    assert_trees_within_ulps_of_scale(ws_over.members[0], ws_single)
    assert_trees_within_ulps_of_scale({n: m_over[n] for n in m_single}, m_single)
    assert float(m_over["weight/only"]) == 1.0
    ws_over = ws_over.replace(members=(ws_single,))  # the next window from the same workers


def _three_structures(kind):
  """Three members whose states differ in structure and whose horizons differ, sharing one theta:
  ``"analytic"`` small systems (a vector, a dict with a counter, a matrix), or ``"lopt"`` a
  learned optimizer training an MLP, a CNN and an LSTM. Returns ``(systems, theta0)``."""
  if kind == "analytic":
    theta0 = jnp.asarray([0.5, -0.2, 0.1])
    vector = tasks.UnrolledSystem(
        init=lambda key: jnp.ones(3), horizon=20, theta0=theta0,
        step=lambda theta, s, key: (0.9 * s + theta, jnp.sum((s - 2.0) ** 2)))
    counted = tasks.UnrolledSystem(
        init=lambda key: {"x": jax.random.normal(key, (3,)), "n": jnp.zeros((), jnp.int32)},
        step=lambda theta, s, key: ({"x": 0.5 * s["x"] + theta, "n": s["n"] + 1},
                                    jnp.sum(s["x"] ** 2)), horizon=15, theta0=theta0)
    matrix = tasks.UnrolledSystem(
        init=lambda key: jnp.zeros((2, 3)), horizon=10, theta0=theta0,
        step=lambda theta, s, key: (s + theta * jax.random.normal(key, (2, 3)),
                                    jnp.mean(jnp.abs(s))))
    return {"a": vector, "b": counted, "c": matrix}, theta0
  lopt = lopt_meta.MLPLOpt()
  return {
      "a": tasks.learned_optimizer_system(tasks.build(
          "image_mlp", dataset="digits", hidden_sizes=(8,), batch_size=32), lopt, horizon=20),
      "b": tasks.learned_optimizer_system(tasks.build(
          "image_conv", dataset="digits", channels=(4,), batch_size=16), lopt, horizon=15),
      "c": tasks.learned_optimizer_system(tasks.build(
          "lstm_copy", hidden_size=8, max_length=4, batch_size=8), lopt, horizon=10),
  }, lopt.init_theta(jax.random.key(0))


@pytest.mark.parametrize("kind", ["analytic", pytest.param("lopt", marks=pytest.mark.slow)])
def test_only_the_drawn_member_advances_and_every_member_is_drawn(kind):
  """Three structures in one program (small analytic systems; slow: a learned optimizer's MLP,
  CNN and LSTM): each step advances the drawn member's particles alone; the others continue where
  they stopped when drawn again."""
  systems, theta0 = _three_structures(kind)
  members = {n: NRES(s, num_particles=4, sigma=0.01, unroll_length=5) for n, s in systems.items()}
  over = OverTasks(members)
  theta = theta0
  ws = over.init(jax.random.key(0), theta)
  drawn = []
  for i in range(12):
    before = ws
    _, ws, metrics = over.estimate(jax.random.key(i), theta, ws)
    changed = [n for n, w0, w1 in zip(over.names, before.members, ws.members)
               if not all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in
                          zip(jax.tree.leaves(w0.t), jax.tree.leaves(w1.t)))]
    assert len(changed) == 1  # one window of one member: the others' particles wait
    assert [n for n in over.names if not math.isnan(float(metrics[f"meta_loss/{n}"]))] == changed
    drawn += changed
  assert set(drawn) == {"a", "b", "c"}
  np.testing.assert_array_equal(np.asarray(ws.draws), [drawn.count(n) for n in over.names])


def _scaled_system(factor):
  """A deterministic quadratic system whose losses are ``factor`` times those of factor 1."""
  return tasks.UnrolledSystem(
      init=lambda key: jnp.ones(3), horizon=10, theta0=jnp.array([0.5, -0.2, 0.1]),
      step=lambda theta, s, key: (0.9 * s + theta, factor * jnp.sum((s - 2.0) ** 2)))


def test_loss_normalization_weighs_members_by_their_inverse_loss_scale():
  """Two members whose losses differ by 10x: weighted, their estimates are equal in size."""
  members = {"x1": NRES(_scaled_system(1.0), num_particles=4, sigma=1e-4, unroll_length=5),
             "x10": NRES(_scaled_system(10.0), num_particles=4, sigma=1e-4, unroll_length=5)}
  over = OverTasks(members, tasks_per_step=2)
  plain = OverTasks(members, tasks_per_step=2, normalize="none")
  theta = members["x1"].system.theta0
  ws = over.init(jax.random.key(0), theta)
  ws_plain = plain.init(jax.random.key(0), theta)
  for i in range(4):
    g, ws, m = over.estimate(jax.random.key(i), theta, ws)
    g_plain, ws_plain, m_plain = plain.estimate(jax.random.key(i), theta, ws_plain)
    assert float(m["weight/x1"]) == pytest.approx(10 * float(m["weight/x10"]), rel=1e-3)
    assert float(m["weight/x1"]) * 1 == pytest.approx(2 * 10 / 11, rel=1e-3)  # mean(1/s) = 1
    assert float(m_plain["weight/x1"]) == float(m_plain["weight/x10"]) == 1.0
  assert float(ws.loss_scale[1]) == pytest.approx(10 * float(ws.loss_scale[0]), rel=1e-3)


def test_bad_distribution_settings_are_one_clear_error():
  est = NRES(_digits_system(), num_particles=4, sigma=0.01, unroll_length=5)
  with pytest.raises(ConfigError, match="^tasks_per_step: must be at most the number of members"):
    OverTasks({"a": est}, tasks_per_step=2)
  with pytest.raises(ConfigError, match="^normalize: unknown normalize 'rank'; valid: loss, none"):
    OverTasks({"a": est}, normalize="rank")
  with pytest.raises(ConfigError, match="^members: unknown task 'mnist_mlp'"):
    tasks.Distribution.from_dict({"members": [{"task": "mnist_mlp"}]}).check()
  with pytest.raises(ConfigError, match="^augment: valid: param_scale, label_noise"):
    tasks.Distribution.from_dict({"members": [{"task": "lstm_copy"}], "augment": {"scale": 1}})
  with pytest.raises(ConfigError, match="^param_scale: must be"):
    tasks.Augmentation(param_scale=(10.0, 1.0)).check()


# ---------------------------------------------------------------------------------------------
# From the command line and YAML
# ---------------------------------------------------------------------------------------------

TINY = {"members": [
    {"task": "image_mlp", "dataset": "digits", "hidden_sizes": [8], "batch_size": 32, "horizon": 20},
    {"task": "image_conv", "dataset": "digits", "channels": [4], "batch_size": 16, "horizon": 15}],
    "augment": {"param_scale": [0.01, 100], "label_noise": 0.1}, "truncation": "log_uniform"}


def _config_file(tmp_path, **run):
  path = tmp_path / "dist.yaml"
  path.write_text(yaml.safe_dump({
      "task": {"task": "tiny_mix", "distribution": TINY},
      "estimator": {"estimator": "nres", "num_particles": 4, "sigma": 0.01, "unroll_length": 1},
      "outer": {"outer_lr": 1e-3},
      "run": {"eval_every": 0, "log_every": 4, "wandb": "disabled", "seed": 2, **run}}))
  return path


@pytest.mark.slow  # quick tier: a single task's exact resume (tests/test_run.py), OverTasks here
def test_multi_task_run_resumes_bit_for_bit(tmp_path):
  path = _config_file(tmp_path, checkpoint_every=4)  # one chunk length: one compilation
  assert cli.main(["train", "--config", str(path), "--outer-steps", "12",
                   "--out", str(tmp_path / "whole")]) == 0
  assert cli.main(["train", "--config", str(path), "--outer-steps", "4",
                   "--out", str(tmp_path / "split")]) == 0
  assert cli.main(["resume", str(tmp_path / "split"), "--outer-steps", "12"]) == 0
  whole, split = run_lib.load_run(tmp_path / "whole"), run_lib.load_run(tmp_path / "split")
  assert whole.step == split.step == 12
  assert_trees_equal(whole.state, split.state)
  assert len(whole.state.workers["members"]) == 2  # as saved: the OverTasksState a dict
  records = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").open()]
  logged = {k.split("/", 1)[1] for r in records for k in r if k.startswith("meta_loss/")}
  assert logged == {"digits_mlp_8_relu_b32", "digits_conv_4_relu_b16"}  # per-task metrics
  saved = json.loads((tmp_path / "whole" / "config.json").read_text())
  assert saved["task"]["distribution"]["members"][1]["task"] == "image_conv"


def test_named_distribution_from_the_command_line_and_its_errors(capsys):
  config = config_lib.TrainConfig(task=config_lib.TaskConfig(task="digits_mix"))
  system, estimator, _ = build_lib.build_run(config)
  assert isinstance(system, tasks.DistributionSystem) and len(system.systems) == 4
  assert isinstance(estimator, OverTasks) and estimator.tasks_per_step == 1
  assert cli.main(["train", "--task", "digits_mix", "--horizon", "100"]) == 2
  assert capsys.readouterr().err.startswith(
      "meta-train: error: horizon: the members of a task distribution carry their own horizons")
  assert cli.main(["train", "--task", "digits_mix", "--task-option", "depth", "3"]) == 2
  assert capsys.readouterr().err == (
      "meta-train: error: task_option: a distribution takes tasks_per_step, normalize, "
      "truncation; got 'depth'\n")
  config = config_lib.TrainConfig(task=config_lib.TaskConfig(
      task="digits_mix", task_option={"tasks_per_step": "2"}))
  assert build_lib.build_run(config).estimator.tasks_per_step == 2


def test_a_distribution_is_evaluated_per_task_beside_adam():
  from meta_train.command import evaluation
  distribution = {"members": TINY["members"]}
  config = config_lib.TrainConfig.from_dict({
      "task": {"task": "tiny_mix", "distribution": distribution},
      "estimator": {"num_particles": 4, "sigma": 0.01, "unroll_length": 5},
      "run": {"eval_episodes": 1, "baseline_lrs": [1e-3, 1e-2]}})
  system = build_lib.build_run(config).system
  evaluator = evaluation.make_evaluator(config, system)
  out = {**evaluator(system.theta0), **evaluator.baseline()}
  names = list(system.systems)
  for name in names:
    assert out[f"eval_vs_adam/{name}"] == pytest.approx(
        out[f"eval_loss/{name}"] / out[f"adam_loss/{name}"])
    assert out[f"adam_lr/{name}"] in (1e-3, 1e-2)
    assert len(out[f"eval_curve/{name}"]["loss"]) == system.systems[name].horizon
  assert out["eval_vs_adam"] == pytest.approx(
      math.exp(np.mean([math.log(out[f"eval_vs_adam/{n}"]) for n in names])))
  assert out["eval_loss"] == pytest.approx(np.mean([out[f"eval_loss/{n}"] for n in names]))
