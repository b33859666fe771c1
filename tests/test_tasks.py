"""The registered systems reproduce the papers' numbers; the registry and interface checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tasks
from meta_train.estimators import NRES


def test_registry_lists_the_papers_systems():
  assert tasks.names("system") == ["halfcheetah", "hopper", "influence_balancing", "lorenz",
                                 "lr_decay_schedule", "many_hparams", "rnn_copy", "swimmer",
                                 "toy2d", "walker2d"]


def test_unknown_task_lists_valid_names():
  with pytest.raises(ValueError) as err:
    tasks.get("lorenz63")
  assert str(err.value) == (
      "task: unknown task 'lorenz63'; valid: cifar10_resnet, digits_mix, digits_mlp, "
      "fashion_mnist_mlp, fashion_mnist_mlp28, halfcheetah, hopper, image_autoencoder, "
      "image_conv, image_mlp, influence_balancing, lorenz, lr_decay_schedule, lstm_copy, "
      "many_hparams, rnn_copy, small_mix, swimmer, toy2d, walker2d")


def test_unknown_override_lists_valid_options():
  with pytest.raises(ValueError, match=r"^horizn: task 'toy2d' takes no option 'horizn'; valid: "
                     r"horizon, x0, theta0$"):
    tasks.get("toy2d", horizn=10)


def test_bad_horizon_rejected():
  with pytest.raises(ValueError, match=r"^horizon: must be a positive int \(T\) or None"):
    tasks.UnrolledSystem(init=lambda k: 0.0, step=lambda th, s, k: (s, 0.0), horizon=0)
  with pytest.raises(ValueError, match=r"^horizon: must be a positive int; got -5$"):
    tasks.get("lorenz", horizon=-5)


def test_user_system_in_three_lines():
  system = tasks.UnrolledSystem(init=lambda key: jnp.zeros(2),
                                step=lambda theta, s, key: (s + theta, jnp.sum((s - 1.0) ** 2)),
                                horizon=10)
  # s_t = t theta: the objective (1/T) sum_t |t theta - 1|^2 is quadratic, so antithetic ES
  # estimates it without smoothing bias: the mean of many estimates is its gradient.
  est = NRES(system, num_particles=2000, sigma=0.1, unroll_length=5)
  theta = jnp.asarray([0.2, -0.1])
  grad, _, _ = est.estimate(jax.random.key(1), theta, est.init(jax.random.key(0), theta))
  true = jax.grad(lambda th: system.mean_loss(th, jax.random.key(0)))(theta)
  # Per pair, eps eps^T g / sigma^2 has per-component variance |g|^2 + g_i^2: 1000 pairs.
  bound = 5 * np.sqrt((np.sum(np.square(true)) + np.square(true)) / 1000)
  assert grad.shape == (2,) and np.all(np.abs(np.asarray(grad - true)) < bound), (grad, true, bound)


def test_toy2d_summed_loss_starts_near_2490():
  system = tasks.get("toy2d")
  losses = system.episode_losses(system.theta0, jax.random.key(0))
  assert losses.shape == (100,)
  np.testing.assert_allclose(float(jnp.sum(losses)), 2490.56, rtol=1e-4)


def test_influence_balancing_optimum_is_minus_one_sixth():
  """The mean loss is quadratic in theta; over long episodes its minimizer tends to -1/6 (the
  start-up transient shifts it by O(1/T)). The gradient at theta0 = 0.5 is positive: descent
  lowers theta (one-step truncations get it backwards: see test_estimators_stats)."""
  system = tasks.get("influence_balancing", horizon=20000)
  objective = lambda th: system.mean_loss(th, jax.random.key(0))
  zero = jnp.zeros(1)
  minimizer = float(-jax.grad(objective)(zero)[0] / jax.hessian(objective)(zero)[0, 0])
  assert abs(minimizer + 1.0 / 6.0) < 2e-3
  assert float(jax.grad(objective)(system.theta0)[0]) > 20.0


def test_lorenz_matches_ground_truth_only_at_the_true_parameters():
  system = tasks.get("lorenz", init_sigma=1.0)
  assert system.horizon == 2000
  np.testing.assert_allclose(system.theta0, np.log([22.56, 40.45]), rtol=1e-6)
  truth = jnp.log(jnp.asarray([10.0, 28.0]))
  # Not exactly 0: exp(log(10)) is not exactly 10 in float32, and chaos amplifies the difference
  # over 2000 steps (0.01 to 0.11, depending on how XLA compiles the Euler step): far below the
  # ~311 of theta0 and the ~40 of the smoothed optimum NRES converges to.
  assert float(system.mean_loss(truth, jax.random.key(0), num_episodes=3)) < 1.0
  test_loss = float(system.mean_loss(system.theta0, jax.random.key(0), num_episodes=10))
  assert 200.0 < test_loss < 450.0  # the papers report about 311 on their held-out set
