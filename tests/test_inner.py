"""Inner tasks and learned-optimizer training as an unrolled system.

The quick tier (``-m "not slow"``) trains a one-stage ResNet (width 8) on mock CIFAR-10; the
``slow`` tests train the registered ResNet-8 (its programs are lowered, in the quick tier, by
tests/test_preflight.py) and check NRES against FullES through a learned optimizer's system (on
analytic systems and Swimmer that identity is quick: tests/test_estimators_exact.py,
tests/test_policy_learning.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

import lopt_meta
import tasks
from tasks import data
from meta_train.estimators import NRES, FullES
from tests import optional


def test_inner_task_registry():
  assert tasks.names("inner") == ["cifar10_resnet", "digits_mlp", "fashion_mnist_mlp",
                                       "fashion_mnist_mlp28", "image_autoencoder", "image_conv",
                                       "image_mlp", "lstm_copy"]
  with pytest.raises(ValueError, match=r"^hidden: task 'digits_mlp' takes no option 'hidden'"):
    tasks.build("digits_mlp", hidden=3)


def _shapes(task):
  return jax.tree.map(jnp.shape, task.init_params(jax.random.key(0)))


def test_mlp_shapes_follow_the_specification():
  assert _shapes(tasks.build("digits_mlp")) == {
      "Dense_0": {"bias": (32,), "kernel": (64, 32)}, "Dense_1": {"bias": (10,), "kernel": (32, 10)}}


def test_fashion_mnist_mlp_shapes_follow_the_specification():
  """8x8 images (64 inputs) by default; fashion_mnist_mlp28 reads the full 28x28 (784)."""
  optional.require_fashion_mnist()
  assert _shapes(tasks.build("fashion_mnist_mlp"))["Dense_0"]["kernel"] == (64, 32)
  assert _shapes(tasks.build("fashion_mnist_mlp28"))["Dense_0"]["kernel"] == (784, 32)


def _train(task, opt, steps, key=jax.random.key(0)):
  """Trains task with an optax optimizer; returns the training losses [steps]."""
  params = task.init_params(key)
  opt_state = opt.init(params)
  state = task.init_state(key)

  def step(carry, k):
    params, opt_state, state = carry
    batch, state = task.train_batch(task.data, state, k)
    loss, grads = jax.value_and_grad(task.loss)(params, batch)
    updates, opt_state = opt.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, task.update_state(state, loss)), loss
  _, losses = jax.jit(lambda c: jax.lax.scan(step, c, jax.random.split(key, steps)))(
      (params, opt_state, state))
  return np.asarray(losses)


def test_digits_mlp_learns_with_adam():
  losses = _train(tasks.build("digits_mlp"), optax.adam(1e-2), 300)
  assert losses[:10].mean() > 1.5 and losses[-50:].mean() < 0.3


@pytest.mark.parametrize("widths", [(8,), pytest.param(None, marks=pytest.mark.slow)],
                         ids=["one_stage", "resnet8"])
def test_cifar10_resnet_runs_on_mock_data(widths):
  data.load.cache_clear()
  with tfds.testing.mock_data(num_examples=40):
    task = tasks.build("cifar10_resnet", batch_size=8,
                                **({} if widths is None else {"widths": widths}))
  data.load.cache_clear()
  losses = _train(task, optax.adam(1e-3), 3)
  assert losses.shape == (3,) and np.all(np.isfinite(losses))
  assert abs(losses[0] - math.log(10)) < 1.0


def test_copy_batches_and_curriculum():
  task = tasks.build("lstm_copy", max_length=8, start_length=4)
  state = task.init_state(jax.random.key(0))
  batch, _ = task.train_batch(None, state, jax.random.key(1))
  tokens, targets, mask = (np.asarray(batch[k]) for k in ("tokens", "targets", "mask"))
  for row in range(tokens.shape[0]):
    L = int(np.sum(tokens[row] < 2))  # the bits read before the delimiter
    assert 1 <= L <= 4 and tokens[row, L] == 2
    np.testing.assert_array_equal(targets[row][mask[row]], tokens[row, :L])  # output = input
  for _ in range(100):  # ~15 low losses per raise (the average restarts at ln 2 after each)
    state = task.update_state(state, jnp.float32(0.01))
  assert int(state.length) == 8
  high = task.update_state(task.init_state(None), jnp.float32(0.69))
  assert int(high.length) == 4


def test_normalizer_clips_and_maps_nan_to_the_bound():
  task = tasks.build("digits_mlp")
  bound = 1.5 * math.log(10)
  got = task.normalize(jnp.asarray([-1.0, 0.5, 100.0, jnp.nan, jnp.inf]))
  np.testing.assert_allclose(got, [0.0, 0.5, bound, bound, bound], rtol=1e-6)


def _system(**kw):
  task = tasks.build("digits_mlp")
  return tasks.learned_optimizer_system(task, kw.pop("lopt", lopt_meta.Adam(learning_rate=1e-2)),
                                        **kw)


def test_train_meta_loss_is_the_normalized_training_loss():
  system = _system(horizon=50)
  losses = np.asarray(system.episode_losses({}, jax.random.key(0)))
  # Adam at 1e-2 on digits: the training loss falls from ~2.3 towards ~0.5 in 50 steps.
  assert losses[0] > 2.0 and losses[-10:].mean() < 1.2
  assert np.all((losses >= 0) & (losses <= 1.5 * math.log(10)))


def test_telescoping_meta_loss_sums_to_the_final_loss_on_the_fixed_batch():
  """The per-step differences sum to the final parameters' loss on the episode's fixed batch
  (``l_{-1} = 0``), measured here independently of the system."""
  task = tasks.build("digits_mlp")
  system = _system(horizon=40, meta_loss="telescoping", fixed_batch_size=500).bound()
  init_key, steps_key = jax.random.split(jax.random.key(3))
  state0 = system.init(init_key)
  final, losses = system.unroll({}, state0, jax.random.split(steps_key, 40))
  fixed = task.eval_batch(task.data, "train", jax.random.wrap_key_data(state0.fixed_key),
                          batch_size=500)
  final_loss, initial_loss = (float(task.normalize(task.loss(p, fixed)))
                              for p in (final.params, state0.params))
  np.testing.assert_allclose(float(jnp.sum(losses)), final_loss, rtol=1e-5, atol=1e-6)
  assert float(final.previous) == pytest.approx(final_loss, rel=1e-6)
  assert final_loss < initial_loss - 0.5  # Adam made progress


def test_valid_meta_loss_reads_the_outer_validation_split():
  """Relabelling the outer-validation split (and only it) changes every meta-loss; relabelling
  the inner-validation or test split changes none: the loss reads that split, not another."""
  system = _system(horizon=20, meta_loss="valid")
  (digits,) = system.data

  def losses(split):
    data = dict(digits)
    if split is not None:
      data[split] = digits[split]._replace(labels=(digits[split].labels + 1) % 10)
    return np.asarray(jax.jit(lambda d: system.bind(d).episode_losses({}, jax.random.key(0)))((data,)))
  base = losses(None)
  assert np.all(losses("outer_valid") != base)
  np.testing.assert_array_equal(losses("inner_valid"), base)
  np.testing.assert_array_equal(losses("test"), base)
  assert base[-5:].mean() < base[:5].mean() - 0.3  # the updated parameters are evaluated


def test_log_uniform_truncations():
  system = _system(horizon=1000, truncation="log_uniform", min_horizon=10).bound()
  lengths = np.asarray(jax.vmap(lambda k: system.init(k).length)(
      jax.random.split(jax.random.key(0), 4000)))
  assert lengths.min() >= 10 and lengths.max() <= 1000
  # log-uniform: each decade [10, 100) and [100, 1000] holds about half of the episodes
  assert 0.45 < np.mean(lengths < 100) < 0.55
  assert system.shortest_episode == 10


def test_task_family_draws_every_task():
  optional.require_fashion_mnist()
  family = [tasks.build("digits_mlp"), tasks.build("fashion_mnist_mlp")]
  system = tasks.learned_optimizer_system(family, lopt_meta.Adam(learning_rate=1e-2), horizon=10)
  states = jax.vmap(system.bound().init)(jax.random.split(jax.random.key(0), 64))
  assert set(np.asarray(states.task_index).tolist()) == {0, 1}
  losses = system.episode_losses({}, jax.random.key(1))
  assert np.all(np.isfinite(np.asarray(losses)))
  with pytest.raises(ValueError, match="parameters share one structure"):
    tasks.learned_optimizer_system([family[0], tasks.build("lstm_copy")],
                                   lopt_meta.Adam(), horizon=10)


def test_diverging_inner_training_costs_a_bounded_meta_loss():
  system = _system(horizon=20, lopt=lopt_meta.SGDM(learning_rate=1e6))
  losses = np.asarray(system.episode_losses({}, jax.random.key(0)))
  assert np.all(np.isfinite(losses))
  np.testing.assert_allclose(losses[-5:], 1.5 * math.log(10), rtol=1e-6)


@pytest.mark.slow
def test_nres_on_a_learned_optimizer_system_is_full_es_when_the_window_is_the_episode():
  """In lockstep with W = T every window is one whole episode with one noise draw: NRES is then
  FullES on the same keys (the paper's remark), here through the learned optimizer's system."""
  system = tasks.learned_optimizer_system(tasks.build("digits_mlp"), lopt_meta.MLPLOpt(),
                                          horizon=12)
  nres = NRES(system, num_particles=4, sigma=0.01, unroll_length=12, lockstep=True)
  full = FullES(system, num_particles=4, sigma=0.01)
  ws = nres.init(jax.random.key(0), system.theta0)
  for i in range(2):
    g_nres, ws, m_nres = nres.estimate(jax.random.key(1 + i), system.theta0, ws)
    g_full, _, m_full = full.estimate(jax.random.key(1 + i), system.theta0, None)
    flat = lambda g: np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)])
    # The same sums in another order, divided by sigma = 0.01: float32 rounding up to ~1e-5.
    np.testing.assert_allclose(flat(g_nres), flat(g_full), rtol=1e-4, atol=1e-5)
    assert float(m_nres["meta_loss"]) == pytest.approx(float(m_full["meta_loss"]), rel=1e-6)
  assert 0 < float(m_nres["meta_loss"]) < 1.5 * math.log(10) and np.any(flat(g_nres) != 0)
