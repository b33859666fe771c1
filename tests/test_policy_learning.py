"""Policy learning in MuJoCo: the environments against gymnasium's, termination, the two physics
backends, the estimators and exact resume on an RL run. (The host callback under the pairs
sharding: tests/test_sharding.py.)

The quick tier (``-m "not slow"``) keeps the environments, termination, the estimators and the two
backends on Swimmer; the ``slow`` tests add the backends on HalfCheetah and an RL run's exact
resume through the command line (a run's exact resume is quick in tests/test_run.py, and the
policy-learning benchmark runs an RL row end to end in tests/test_benchmarks_run.py)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tasks
from lopt_meta.errors import ConfigError
from meta_train.command import cli
from meta_train.command import run as run_lib
from meta_train.estimators import NRES, TBPTT, FullES
from meta_train.command.logs import read_metrics
from tasks.locomotion import environments as locomotion, physics, policy_learning
from tests import optional, systems

mujoco = optional.import_mujoco()
INTEGRATION = mujoco.mjtState.mjSTATE_INTEGRATION if mujoco else None


@pytest.fixture(autouse=True)
def rl_extra():
  """Every test here needs the rl extra: skipped without it, failed under CI."""
  optional.require_mujoco()


def _gym_row(env) -> np.ndarray:
  row = np.empty(mujoco.mj_stateSize(env.model, INTEGRATION))
  mujoco.mj_getState(env.model, env.data, row, INTEGRATION)
  return row


@pytest.mark.parametrize("gym_id", ["Swimmer-v5", "HalfCheetah-v5", "Hopper-v5", "Walker2d-v5"])
def test_steps_equal_gymnasiums_bit_for_bit(gym_id):
  """From the same start state and for the same actions, the C-engine backend's observation,
  reward, termination and whole integration state equal gymnasium's own environment exactly
  (float64 on the host; observation and reward rounded once to float32)."""
  spec, env = locomotion.from_gymnasium(gym_id)
  engine = physics.make("mujoco", spec)
  rng = np.random.default_rng(0)
  row, obs = jax.jit(engine.reset)(jnp.asarray(rng.uniform(-0.1, 0.1, engine.nq), jnp.float32),
                                   jnp.asarray(rng.uniform(-0.1, 0.1, engine.nv), jnp.float32))
  env.reset(seed=0)
  mujoco.mj_setState(env.model, env.data, engine.rows_float64(row), INTEGRATION)
  np.testing.assert_array_equal(np.asarray(obs), env._get_obs().astype(np.float32))
  step = jax.jit(engine.step)
  for t in range(40):
    action = rng.uniform(-1, 1, engine.nu).astype(np.float32)
    out = step(row, action)
    gym_obs, gym_reward, gym_terminated, truncated, _ = env.step(action.astype(np.float64))
    assert not truncated
    np.testing.assert_array_equal(engine.rows_float64(out.row), _gym_row(env), err_msg=f"t={t}")
    np.testing.assert_array_equal(np.asarray(out.obs), gym_obs.astype(np.float32))
    assert np.float32(gym_reward) == out.reward
    assert bool(out.terminated) == gym_terminated
    if gym_terminated:
      break
    row = out.row


class _ReplayNoise:
  """Stands in for an environment's ``np_random``: its draws return the given arrays, in order."""

  def __init__(self, *draws):
    self.draws = list(draws)

  def uniform(self, low, high, size):
    del low, high
    return self._next(size)

  def standard_normal(self, size):
    return self._next(size)

  def _next(self, size):
    draw = self.draws.pop(0)
    assert draw.shape == (size,)
    return draw.copy()


def _gym_reset_with(env, spec, key, nq, nv):
  """gymnasium's own ``env.reset`` path (``reset_model``), drawing the noise the system's
  ``init(key)`` draws; returns gymnasium's observation."""
  qpos_noise, qvel_noise = (np.asarray(n, np.float64)
                            for n in policy_learning.reset_noise(spec, nq, nv, key))
  if spec.qvel_noise == "normal":  # gymnasium scales a standard normal draw
    qvel_noise = qvel_noise / spec.reset_noise_scale
  env.reset(seed=0)
  env.np_random = _ReplayNoise(qpos_noise, qvel_noise)
  gym_obs, _ = env.reset()
  return gym_obs


@pytest.mark.parametrize("gym_id", ["Swimmer-v5", "HalfCheetah-v5", "Hopper-v5", "Walker2d-v5"])
def test_system_steps_equal_gymnasiums_under_raw_actions(gym_id):
  """The system's own ``init`` and ``step`` (through a linear policy whose actions lie far
  outside the control range [-1, 1]) against gymnasium's ``reset`` with the same noise and
  ``env.step(raw_action)``: the action reaches the physics unclipped (MuJoCo clamps the controls
  itself) and the control cost is charged on it, so the integration state (ctrl included),
  observation, reward and termination are equal bit for bit."""
  spec, env = locomotion.from_gymnasium(gym_id)
  engine = physics.make("mujoco", spec)
  system = tasks.gym_mujoco(gym_id, horizon=40)
  key = jax.random.key(3)
  state = system.init(key)  # eager, as the noise _gym_reset_with draws
  gym_obs = _gym_reset_with(env, spec, key, engine.nq, engine.nv)
  np.testing.assert_array_equal(engine.rows_float64(state["physics"]), _gym_row(env))
  np.testing.assert_array_equal(np.asarray(state["obs"]), gym_obs.astype(np.float32))
  shape = system.theta0["Dense_0"]["kernel"].shape
  kernel = 0.5 * np.random.default_rng(1).standard_normal(shape).astype(np.float32)
  theta = {"Dense_0": {"kernel": jnp.asarray(kernel)}}
  step, ctrl, largest = jax.jit(system.step), engine.layout.slices["ctrl"], 0.0
  for t in range(40):
    raw = np.asarray(state["obs"], np.float64) @ kernel.astype(np.float64)
    x_before = engine.qpos_qvel(engine.rows_float64(state["physics"]))[0][0]
    state, loss = step(theta, state, jax.random.key(t))
    row = engine.rows_float64(state["physics"])
    action = row[ctrl].copy()  # what the system gave the physics: the policy's raw action
    np.testing.assert_allclose(action, raw, rtol=1e-5, atol=1e-5, err_msg=f"t={t}")
    gym_obs, gym_reward, gym_terminated, truncated, _ = env.step(action)
    assert not truncated
    np.testing.assert_array_equal(row, _gym_row(env), err_msg=f"t={t}")
    np.testing.assert_array_equal(np.asarray(state["obs"]), gym_obs.astype(np.float32))
    assert np.float32(gym_reward) == -loss, f"t={t}"
    qpos, qvel = engine.qpos_qvel(row)  # and the float64 reward before its rounding
    assert spec.reward(x_before, qpos[0], action, spec.healthy(qpos, qvel, np), np) == gym_reward
    assert bool(state["done"]) == gym_terminated
    largest = max(largest, float(np.abs(action).max()))
    if gym_terminated:
      break
  assert largest > 3.0  # well outside the control range


def test_reset_noise_has_gymnasiums_distribution():
  """qpos ~ qpos0 + U(-s, s) and (HalfCheetah) qvel ~ s N(0, 1), read back from the state."""
  system = tasks.get("halfcheetah")
  states = jax.jit(jax.vmap(system.init))(jax.random.split(jax.random.key(0), 2000))
  engine = physics.make("mujoco", locomotion.from_gymnasium("HalfCheetah-v5")[0])
  qpos, qvel = engine.qpos_qvel(engine.rows_float64(states["physics"]))
  noise = qpos - engine.init_qpos
  assert np.all(np.abs(noise) <= 0.1) and abs(noise.std() - 0.1 / np.sqrt(3)) < 0.003
  assert abs(qvel.std() - 0.1) < 0.003 and abs(qvel.mean()) < 0.003


def test_pairs_start_together_and_see_the_same_keys():
  """Both particles of a pair start from the same state (the shared reset key); pairs differ."""
  system = tasks.get("swimmer", horizon=20)
  nres = NRES(system, num_particles=6, sigma=0.3, unroll_length=5, lockstep=True,
              devices=jax.devices()[:1])
  ws = nres.init(jax.random.key(0), system.theta0)
  rows = np.asarray(ws.states["physics"])  # [P, 2, nstate, 2]
  np.testing.assert_array_equal(rows[:, 0], rows[:, 1])
  assert not np.array_equal(rows[0, 0], rows[1, 0])
  _, ws, _ = nres.estimate(jax.random.key(1), system.theta0, ws)
  rows = np.asarray(ws.states["physics"])
  assert not np.array_equal(rows[:, 0], rows[:, 1])  # +eps and -eps went different ways


def test_a_terminated_particle_adds_zero_loss_and_stays_frozen():
  system = tasks.get("hopper", horizon=60).bound()
  theta = jax.tree.map(lambda w: jnp.full(w.shape, 0.5), system.theta0)  # falls within steps
  state = system.init(jax.random.key(0))
  states, losses, done = [], [], []
  step = jax.jit(system.step)
  for t in range(60):
    state, loss = step(theta, state, jax.random.key(t))
    states.append(state)
    losses.append(float(loss))
    done.append(bool(state["done"]))
  first = done.index(True)
  assert 0 < first < 59 and all(done[first:])
  assert losses[first] != 0.0  # the terminating step's reward counts
  assert all(loss == 0.0 for loss in losses[first + 1:])
  for later in states[first + 1:]:
    jax.tree.map(np.testing.assert_array_equal, later, states[first])


def test_nres_with_window_equal_to_horizon_is_full_es_on_swimmer():
  system = tasks.get("swimmer", horizon=12)
  theta = jax.tree.map(lambda w: 0.1 * jnp.ones_like(w), system.theta0)
  nres = NRES(system, num_particles=8, sigma=0.3, unroll_length=12, lockstep=True)
  full = FullES(system, num_particles=8, sigma=0.3)
  ws = nres.init(jax.random.key(5), theta)
  for i in range(2):
    key = jax.random.key(10 + i)
    g_nres, ws, m_nres = nres.estimate(key, theta, ws)
    g_full, _, m_full = full.estimate(key, theta, None)
    np.testing.assert_allclose(systems.flat(g_nres), systems.flat(g_full), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(m_nres["meta_loss"], m_full["meta_loss"], rtol=1e-6)


# HalfCheetah (slow) adds a larger model and larger actions to what Swimmer checks.
@pytest.mark.parametrize("task", ["swimmer", pytest.param("halfcheetah", marks=pytest.mark.slow)])
def test_the_two_backends_agree_on_a_short_rollout(task):
  """MJX (float32) and the C engine (float64) from the same reset noise, under the same policy:
  the same observations and rewards to float32 accuracy over 8 steps. The actions leave the
  control range (|a| up to about 4 and 60), so both engines clamp the controls alike and charge
  the control cost on the raw action."""
  c, x = (tasks.get(task, horizon=8, backend=b) for b in ("mujoco", "mjx"))
  theta = jax.tree.map(jnp.ones_like, c.theta0)
  keys = jax.random.split(jax.random.key(0), 3)
  c_losses, x_losses = (jax.jit(jax.vmap(lambda k, s=s: s.episode_losses(theta, k)))(keys)
                        for s in (c, x))
  np.testing.assert_allclose(x_losses, c_losses, rtol=1e-3, atol=2e-4)
  c_state = jax.jit(c.init)(keys[0])
  x_state = jax.jit(x.init)(keys[0])
  np.testing.assert_allclose(np.asarray(x_state["obs"]), np.asarray(c_state["obs"]), atol=1e-6)


SWIMMER = ["--task", "swimmer", "--horizon", "40", "--estimator", "nres", "--num-particles", "8",
           "--sigma", "0.3", "--unroll-length", "10", "--outer-lr", "1.0", "--outer-optimizer",
           "sgd", "--seed", "1", "--log-every", "2", "--eval-every", "4", "--eval-episodes", "2",
           "--wandb", "disabled"]


@pytest.mark.slow
def test_rl_run_resumes_bitwise_and_logs_returns(tmp_path):
  assert cli.main(["train", *SWIMMER, "--outer-steps", "8", "--out", str(tmp_path / "whole")]) == 0
  assert cli.main(["train", *SWIMMER, "--outer-steps", "5", "--out", str(tmp_path / "split")]) == 0
  assert cli.main(["resume", str(tmp_path / "split"), "--outer-steps", "8"]) == 0
  whole, split = run_lib.load_run(tmp_path / "whole"), run_lib.load_run(tmp_path / "split")
  for x, y in zip(jax.tree.leaves(whole.state), jax.tree.leaves(split.state)):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  records = read_metrics(tmp_path / "whole")
  evals = [r for r in records if "eval_return" in r]
  assert [r["step"] for r in evals] == [0, 4, 8]
  for r in evals:
    assert r["eval_return"] == pytest.approx(-40 * r["eval_loss"], rel=1e-5)
  burn_in = records[0]["burn_in_steps"]
  assert records[0]["total_unroll_steps"] == burn_in > 0
  assert records[-1]["total_unroll_steps"] == burn_in + 8 * 8 * 10  # N * W per outer step
  out = tmp_path / "runs.png"
  assert cli.main(["plot", str(tmp_path / "whole"), "--out", str(out)]) == 0
  assert out.stat().st_size > 0


def test_bad_options_get_one_clear_error():
  with pytest.raises(ConfigError, match=r"^backend: unknown backend 'bullet'; valid: mjx, mujoco$"):
    tasks.get("swimmer", backend="bullet")
  with pytest.raises(ConfigError, match=r"^policy: unknown policy 'rnn'; valid: linear, mlp$"):
    tasks.get("swimmer", policy="rnn")
  with pytest.raises(ConfigError, match=r"^env: unsupported environment 'Ant-v5'; supported: "
                     r"Swimmer-v5, HalfCheetah-v5, Hopper-v5, Walker2d-v5$"):
    tasks.gym_mujoco("Ant-v5")
  with pytest.raises(ConfigError, match=r"^task: unknown task 'swimer'; valid: .*swimmer"):
    tasks.get("swimer")
  with pytest.raises(ConfigError, match=r"^estimator: tbptt backpropagates through the steps, and "
                     r"the steps of 'swimmer' are not differentiable; use an ES estimator"):
    TBPTT(tasks.get("swimmer"), num_particles=2, unroll_length=10)


def test_cli_names_the_bad_backend(capsys):
  code = cli.main(["train", "--task", "swimmer", "--task-option", "backend", "physx",
                   "--wandb", "disabled", "--out", "/nonexistent/never-created"])
  assert code == 2
  assert capsys.readouterr().err.strip() == (
      "meta-train: error: backend: unknown backend 'physx'; valid: mjx, mujoco")
  assert not os.path.exists("/nonexistent/never-created")


def test_without_the_rl_extra_tasks_imports_and_says_how_to_install():
  code = (
      "import sys\n"
      "for m in ('mujoco', 'mujoco.mjx', 'mujoco.batch', 'gymnasium'): sys.modules[m] = None\n"
      "import tasks\n"
      "assert tasks.get('lorenz').horizon == 2000\n"
      "try:\n"
      "  tasks.get('swimmer')\n"
      "except Exception as e:\n"
      "  print(type(e).__name__, e)\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.startswith("ConfigError task: policy-learning tasks need 'gymnasium'")
  assert "pip install 'lopt-meta[rl]'" in out.stdout


def test_policies():
  linear = tasks.get("swimmer", policy="linear")
  assert jax.tree.map(jnp.shape, linear.theta0) == {"Dense_0": {"kernel": (8, 2)}}
  assert all(np.all(np.asarray(w) == 0) for w in jax.tree.leaves(linear.theta0))
  cheetah = tasks.get("halfcheetah").theta0["Dense_0"]["kernel"]
  assert cheetah.shape == (17, 6)
  assert abs(float(jnp.std(cheetah)) - np.sqrt(0.03 / 17)) < 0.01  # fan-in variance 0.03
  mlp = tasks.get("swimmer", policy="mlp", hidden=30)
  assert jax.tree.map(jnp.shape, mlp.theta0) == {
      "Dense_0": {"kernel": (8, 30), "bias": (30,)}, "Dense_1": {"kernel": (30, 2), "bias": (2,)}}
  assert np.all(np.asarray(mlp.theta0["Dense_1"]["kernel"]) == 0)  # starts at the zero action
  assert float(jnp.std(mlp.theta0["Dense_0"]["kernel"])) > 0.1
  # MuJoCo clamps the controls, so a huge policy's episode stays finite; the control cost is
  # charged on its raw actions (inside [-1, 1] it could be at most 2e-4 a step)
  big = jax.tree.map(lambda w: 1e3 * jnp.ones_like(w), linear.theta0)
  losses = jax.jit(lambda k: linear.episode_losses(big, k, 5))(jax.random.key(0))
  assert np.all(np.isfinite(np.asarray(losses))) and float(jnp.max(losses)) > 1.0
  # running observation normalisation: the first observation is normalised to exactly zero, so
  # the first action of any linear policy is 0; later ones are not
  normed = tasks.get("swimmer", obs_norm=True, horizon=3).bound()
  plain = tasks.get("swimmer", horizon=3).bound()
  key = jax.random.key(0)
  state, loss = normed.step(big, normed.init(key), key)
  _, zero_action_loss = plain.step(linear.theta0, plain.init(key), key)
  assert float(state["norm"]["count"]) == 1.0 and float(loss) == float(zero_action_loss)
  state, _ = normed.step(big, state, key)
  assert float(state["norm"]["count"]) == 2.0
  json.dumps(jax.tree.map(lambda x: np.asarray(x).tolist(), mlp.theta0))  # a plain pytree
