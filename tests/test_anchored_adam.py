"""AnchoredAdam: exactly its base before meta-training, bounded by construction, progress-aware."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt_meta
from lopt_meta import anchored_adam, features
from tests.paths import kernel_path  # noqa: F401  (the fixture)
from tests.trees import assert_trees_equal, assert_trees_within_ulps

KEY = jax.random.key(0)


def _params(key=KEY):
  ks = jax.random.split(key, 6)
  return {"input": {"kernel": jax.random.normal(ks[0], (784, 16)) * 0.05,
                    "bias": jnp.zeros(16)},
          "hidden": {"kernel": jax.random.normal(ks[1], (16, 128)) * 0.2,
                     "bias": jax.random.normal(ks[2], (128,)) * 0.1},
          "conv": jax.random.normal(ks[3], (3, 3, 16, 8)) * 0.1,
          "lstm_hh": jax.random.normal(ks[4], (32, 32)) * 0.1,
          "scale": jax.random.normal(ks[5], ())}


def _grads(params, i):
  return jax.tree.map(lambda p: jnp.sin(3.0 * p + i) + 0.1 * i, params)


def _mup_reference(lr, base_fan_in, b1=0.9, b2=0.999, eps=1e-8):
  """The base as an optax chain: Adam's direction, each tensor times ``-lr`` times its muP scale
  (one float32 factor per tensor)."""
  def scale_by_mup():
    def update_fn(updates, state, params=None):
      del params
      scaled = jax.tree.map(
          lambda u: u * (-lr * np.float32(min(1.0, base_fan_in / anchored_adam.fan_in(u.shape))
                                          if u.ndim >= 2 else 1.0)), updates)
      return scaled, state
    return optax.GradientTransformation(lambda p: optax.EmptyState(), update_fn)
  return optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps), scale_by_mup())


@pytest.mark.parametrize("mup", [True, False])
def test_before_meta_training_it_is_its_base_bit_for_bit(mup, kernel_path):
  """At init_theta (both networks' last layers zero) every update equals the base's (the same
  optimizer with no learned part: Adam at lr times each tensor's muP scale) bit for bit, over
  30 jitted steps with losses: the learned parts contribute exactly x1 and +0."""
  lopt = lopt_meta.AnchoredAdam(learning_rate=3e-3, mup=mup)
  base = lopt_meta.AnchoredAdam(learning_rate=3e-3, mup=mup, multiplier=False, correction=0.0)
  theta, theta_base = lopt.init_theta(KEY), base.init_theta(KEY)
  assert theta_base == {}
  params_l = params_b = _params()
  state_l, state_b = lopt.init(params_l, num_steps=30), base.init(params_b, num_steps=30)
  step_l = jax.jit(lambda g, s, p, loss: lopt.update(theta, g, s, p, loss=loss))
  step_b = jax.jit(lambda g, s, p, loss: base.update(theta_base, g, s, p, loss=loss))
  for i in range(30):
    grads = _grads(params_l, i)
    loss = jnp.float32(2.0 / (i + 1))
    u_l, state_l = step_l(grads, state_l, params_l, loss)
    u_b, state_b = step_b(grads, state_b, params_b, loss)
    assert_trees_equal(u_l, u_b)
    params_l = params_b = optax.apply_updates(params_l, u_l)


@pytest.mark.parametrize("mup", [True, False])
def test_the_base_is_adam_times_the_mup_scales(mup):
  """The base is optax's Adam with each tensor's update times ``-lr mup_i`` (``optax.adam`` when
  ``mup=False``), to 8 ulps over 30 jitted steps: XLA rounds the same arithmetic, compiled as
  another program, differently by an ulp or a few (optax's own chain differs between jit and eager;
  the bias corrections, the square root and the division each round once, the scale once more)."""
  base = lopt_meta.AnchoredAdam(learning_rate=3e-3, mup=mup, multiplier=False, correction=0.0)
  reference = _mup_reference(3e-3, 64.0) if mup else optax.adam(3e-3)
  params_l = params_r = _params()
  state_l, state_r = base.init(params_l, num_steps=30), reference.init(params_r)
  step_l = jax.jit(lambda g, s, p: base.update({}, g, s, p))
  step_r = jax.jit(reference.update)
  for i in range(30):
    grads = _grads(params_l, i)
    u_l, state_l = step_l(grads, state_l, params_l)
    u_r, state_r = step_r(grads, state_r, params_r)
    assert_trees_within_ulps(u_l, u_r, ulps=8)
    params_l = params_r = optax.apply_updates(params_l, u_l)


def test_mup_scales_follow_the_fan_in():
  layout = features.FlatLayout.of(_params())
  # Leaves in tree order: conv [3,3,16,8], hidden bias, hidden kernel [16,128], input bias,
  # input kernel [784,16], lstm_hh [32,32], scale [].
  np.testing.assert_array_equal(anchored_adam.mup_scales(layout, 64.0),
                                np.float32([64 / 144, 1, 1, 1, 64 / 784, 1, 1]))
  assert [anchored_adam.fan_in(s) for s in layout.shapes] == [144, 1, 16, 1, 784, 32, 1]


def _random_theta(lopt, key, scale):
  theta = lopt.init_theta(jax.random.key(1))
  leaves, treedef = jax.tree.flatten(theta)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [scale * jax.random.normal(k, x.shape)
                                      for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_every_step_is_within_the_bound_of_its_base_step(scale):
  """Whatever theta (here random, up to 100x the initialization's scale), each tensor's step has
  an RMS within exp(a) (1 + correction) of the base step's, and at least exp(-a) (1 - correction)
  of it."""
  lopt = lopt_meta.AnchoredAdam(max_log_multiplier=1.5, correction=0.5)
  base = lopt_meta.AnchoredAdam(max_log_multiplier=1.5, correction=0.5)
  theta0 = base.init_theta(KEY)
  params = _params()
  layout = features.FlatLayout.of(params)
  hi, lo = np.exp(1.5) * 1.5, np.exp(-1.5) * 0.5
  for seed in range(4):
    theta = _random_theta(lopt, jax.random.key(seed), scale)
    state = state0 = lopt.init(params, num_steps=100)
    for i in range(5):
      grads = _grads(params, i + seed)
      u, state = lopt.update(theta, grads, state, params, loss=jnp.float32(1.0 + i))
      u0, state0 = base.update(theta0, grads, state0, params, loss=jnp.float32(1.0 + i))
      rms = lambda t: np.sqrt(np.asarray(anchored_adam._tensor_mean(
          jnp.square(features.flatten(t)), layout)))
      ratio = rms(u) / np.maximum(rms(u0), 1e-30)
      moving = rms(u0) > 0
      assert np.all(ratio[moving] <= hi * (1 + 1e-5)), ratio
      assert np.all(ratio[moving] >= lo * (1 - 1e-5)), ratio
      assert np.all(np.isfinite(features.flatten(u)))


def test_the_learned_parts_move_the_step():
  """A nonzero last layer of each network changes the step (the parts are wired in)."""
  lopt = lopt_meta.AnchoredAdam()
  theta = lopt.init_theta(KEY)
  params = _params()
  grads = _grads(params, 0)
  state = lopt.init(params, num_steps=100)
  base, _ = lopt.update(theta, grads, state, params, loss=jnp.float32(1.0))
  tensor = jax.tree.map(lambda x: x, theta)
  tensor["tensor"]["Dense_1"]["bias"] = jnp.full((1,), 0.5)
  scaled, _ = lopt.update(tensor, grads, state, params, loss=jnp.float32(1.0))
  for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(scaled)):
    np.testing.assert_allclose(b, np.exp(0.5) * np.asarray(a), rtol=1e-6)
  param = jax.tree.map(lambda x: x, theta)
  param["param"]["w2"] = jnp.ones_like(param["param"]["w2"])
  corrected, _ = lopt.update(param, grads, state, params, loss=jnp.float32(1.0))
  diff = features.flatten(corrected) - features.flatten(base)
  assert float(jnp.max(jnp.abs(diff))) > 1e-5


def test_progress_features_read_t_over_num_steps():
  """x = t / T at several scales; without num_steps the features stay at t = 0's (x = 0)."""
  lopt = lopt_meta.AnchoredAdam()
  params = _params()
  for num_steps, t, x in ((1000, 250, 0.25), (100, 25, 0.25), (10, 40, 1.0)):
    state = lopt.init(params, num_steps=num_steps)._replace(count=jnp.int32(t))
    f = lopt._global_features(state, state.loss_ema, state.loss_count, state.loss_start)
    want = [np.tanh(x / s) for s in anchored_adam.PROGRESS_SCALES]
    want += [np.tanh((1 - x) / s) for s in anchored_adam.REMAINING_SCALES]
    want += [np.tanh(t / s) for s in anchored_adam.STEP_SCALES] + [0.0, 0.0]
    np.testing.assert_allclose(f, want, rtol=1e-6, atol=1e-7)
  unknown = lopt.init(params)._replace(count=jnp.int32(500))
  f = lopt._global_features(unknown, unknown.loss_ema, unknown.loss_count, unknown.loss_start)
  np.testing.assert_allclose(f[:7], [0.0] * 4 + [np.tanh(1 / s) for s in (0.03, 0.1, 0.3)],
                             atol=1e-7)
  assert float(lopt_meta.AnchoredAdam(progress=False)._global_features(
      unknown, unknown.loss_ema, unknown.loss_count, unknown.loss_start).sum()) == 0.0


def test_loss_features_are_the_trend_and_the_drop_from_the_first_loss():
  lopt = lopt_meta.AnchoredAdam()
  params = _params()
  state = lopt.init(params, num_steps=100)
  theta = lopt.init_theta(KEY)
  losses = [4.0, 2.0, 1.0]
  for loss in losses:
    _, state = lopt.update(theta, _grads(params, 0), state, params, loss=jnp.float32(loss))
  fast = slow = 0.0
  for k, loss in enumerate(losses, 1):
    fast, slow = 0.9 * fast + 0.1 * loss, 0.99 * slow + 0.01 * loss
  fast, slow = fast / (1 - 0.9 ** 3), slow / (1 - 0.99 ** 3)
  f = lopt._global_features(state, state.loss_ema, state.loss_count, state.loss_start)
  np.testing.assert_allclose(f[-2:], [np.log(fast / slow), np.log(slow / 4.0) / 3], rtol=1e-4)
  _, unchanged = lopt.update(theta, _grads(params, 0), state, params)  # no loss: kept
  assert_trees_equal((unchanged.loss_ema, unchanged.loss_count, unchanged.loss_start),
                     (state.loss_ema, state.loss_count, state.loss_start))


def test_bad_options_are_one_error_naming_the_field():
  with pytest.raises(ValueError, match=r"^learning_rate: must be a positive finite number; got 0"):
    lopt_meta.AnchoredAdam(learning_rate=0)
  with pytest.raises(ValueError, match=r"^correction: must be >= 0; got -1"):
    lopt_meta.AnchoredAdam(correction=-1)
  with pytest.raises(ValueError, match=r"^warmup: must be in \[0, 1\); got 1"):
    lopt_meta.AnchoredAdam(warmup=1)
  with pytest.raises(ValueError, match=r"^param_hidden: two hidden widths; got \(8,\)"):
    lopt_meta.AnchoredAdam(param_hidden=(8,))


@pytest.mark.parametrize("options", [{"correction": 0.0}, {"multiplier": False},
                                     {"mup": False, "progress": False}])
def test_ablations_drop_their_part_of_theta(options):
  lopt = lopt_meta.AnchoredAdam(**options)
  theta = lopt.init_theta(KEY)
  assert ("param" in theta) == (options.get("correction", 0.5) > 0)
  assert ("tensor" in theta) == options.get("multiplier", True)
  params = _params()
  u, _ = jax.jit(lambda s: lopt.update(theta, _grads(params, 1), s, params))(
      lopt.init(params, num_steps=10))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(u))


def test_num_steps_reaches_the_state_through_optax_and_export(tmp_path):
  """``as_optax``, ``load_optimizer`` and ``load_pretrained`` pass ``num_steps`` to the state
  (0 when it is not given: the progress features stay at t/T = 0)."""
  lopt = lopt_meta.AnchoredAdam()
  theta = lopt.init_theta(KEY)
  params = _params()
  assert float(lopt.as_optax(theta, num_steps=700).init(params).num_steps) == 700
  assert float(lopt.as_optax(theta).init(params).num_steps) == 0
  path = lopt_meta.save_optimizer(tmp_path / "a.npz", lopt, theta)
  assert float(lopt_meta.load_optimizer(path, num_steps=300).init(params).num_steps) == 300
  tx = lopt_meta.load_pretrained(num_steps=123)
  tx.init(params)  # every shipped optimizer takes num_steps (and may ignore it)


@pytest.mark.parametrize("num_steps", [30, 47, 400])
def test_the_schedule_is_the_bench_warmup_cosine(num_steps):
  """``schedule=True`` without muP and learned parts is ``optax.adam`` at ``meta-train bench``'s
  ``adam_wc`` schedule over ``num_steps`` (the first step zero, the warmup, the cosine to 0)
  over 30 jitted steps (for 400 steps: the warmup's 20 steps, then the cosine's start), to 1e-6
  relative or 1e-6 ``lr`` absolute: near the cosine's end ``1 + cos`` cancels, so one ulp of the
  cosine (the two programs fuse it differently) is many ulps of a small step. With
  ``num_steps`` unknown the schedule is 1: the unscheduled base bit for bit."""
  from meta_train.command import bench
  lr = 3e-3
  base = lopt_meta.AnchoredAdam(learning_rate=lr, mup=False, multiplier=False, correction=0.0,
                                schedule=True)
  plain = lopt_meta.AnchoredAdam(learning_rate=lr, mup=False, multiplier=False, correction=0.0)
  reference = optax.adam(bench.warmup_cosine(lr, num_steps))
  params_l = params_r = _params()
  state_l, state_r = base.init(params_l, num_steps=num_steps), reference.init(params_r)
  state_u, state_p = base.init(params_l), plain.init(params_l)
  step_l = jax.jit(lambda g, s, p: base.update({}, g, s, p))
  step_p = jax.jit(lambda g, s, p: plain.update({}, g, s, p))
  step_r = jax.jit(reference.update)
  for i in range(30):
    grads = _grads(params_l, i)
    u_l, state_l = step_l(grads, state_l, params_l)
    u_r, state_r = step_r(grads, state_r, params_r)
    for x, y in zip(jax.tree.leaves(u_l), jax.tree.leaves(u_r)):
      np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6 * lr)
    if i == 0:
      assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(u_l))
    u_u, state_u = step_l(grads, state_u, params_l)
    u_p, state_p = step_p(grads, state_p, params_l)
    assert_trees_equal(u_u, u_p)
    params_l = params_r = optax.apply_updates(params_l, u_l)
