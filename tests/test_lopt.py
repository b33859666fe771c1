"""Learned and hand-designed optimizers: exact formulations, equivalences, the optax contract."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt_meta
from lopt_meta import features
from lopt_meta.adafac_mlp_lopt import leaf_features
from tests.trees import assert_trees_within_ulps

KEY = jax.random.key(0)


def _params(key=KEY):
  k1, k2, k3, k4 = jax.random.split(key, 4)
  return {"dense": {"kernel": jax.random.normal(k1, (5, 3)), "bias": jax.random.normal(k2, (3,))},
          "conv": jax.random.normal(k3, (2, 2, 3, 4)), "scale": jax.random.normal(k4, ())}


def _reference_mlp_lopt_step(lopt, theta, grads, momenta, params, iteration):
  """LOLv2 as learned_optimization writes it: per tensor, the 11 time features tiled onto every
  parameter and concatenated to its 8 normalized features, then the full 19 -> 32 -> 32 -> 2 MLP."""
  decays = jnp.asarray(lopt.momentum_decays)
  time = features.tanh_embedding(iteration)

  def per_tensor(p, g, m):
    p, g = jnp.reshape(p, p.shape or (1,)), jnp.reshape(g, g.shape or (1,))
    m = jnp.reshape(m, p.shape + (6,))
    m = decays * m + (1 - decays) * g[..., None]
    x = jnp.concatenate([g[..., None], p[..., None], m], axis=-1)
    axes = tuple(range(p.ndim))
    x = x * jax.lax.rsqrt(1e-5 + jnp.mean(x ** 2, axis=axes, keepdims=True))
    x = jnp.concatenate([x, jnp.broadcast_to(time, p.shape + (11,))], axis=-1)
    for i in range(3):
      x = x @ theta[f"w{i}"] + theta[f"b{i}"]
      if i < 2:
        x = jax.nn.relu(x)
    return -(x[..., 0] * jnp.exp(x[..., 1] * 0.001) * 0.001)

  return jax.tree.map(per_tensor, params, grads, momenta)


def test_mlp_lopt_matches_the_per_tensor_formulation():
  lopt = lopt_meta.MLPLOpt()
  theta = lopt.init_theta(jax.random.key(1))
  params = _params()
  state = lopt.init(params)
  for i in range(3):
    grads = jax.tree.map(lambda p: jnp.sin(p * (i + 1)), params)
    momenta = features.unflatten(state.momentum.T.reshape(-1), jax.tree.map(
        lambda p: jnp.zeros(p.shape + (6,)), params))
    expected = _reference_mlp_lopt_step(lopt, theta, grads, momenta, params, state.iteration)
    updates, state = jax.jit(lopt.update)(theta, grads, state, params)
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(expected)):
      np.testing.assert_allclose(np.ravel(a), np.ravel(b), rtol=2e-5, atol=1e-9)
    params = optax.apply_updates(params, updates)
  assert int(state.iteration) == 3


def test_mlp_lopt_has_1762_meta_parameters_and_configurable_sizes():
  count = lambda lopt: sum(x.size for x in jax.tree.leaves(lopt.init_theta(KEY)))
  assert count(lopt_meta.MLPLOpt()) == 1762
  assert count(lopt_meta.MLPLOpt(hidden_sizes=(8,))) == 19 * 8 + 8 + 8 * 2 + 2


def test_adafactor_features_of_a_matrix():
  """For g on a [4, 6] matrix at step 1 (zero accumulators), the factored accumulators are the
  row and column means of g^2 times (1 - decay), and the factored gradient is Adafactor's."""
  g = jax.random.normal(KEY, (4, 6))
  p = jnp.ones((4, 6))
  decays = (jnp.asarray([0.9, 0.99, 0.999]), jnp.asarray([0.999]), jnp.asarray([0.5, 0.9, 0.99]))
  zeros = (jnp.zeros((4, 6, 3)), jnp.zeros((4, 6, 1)), jnp.zeros((4, 3)), jnp.zeros((6, 3)),
           jnp.zeros((0,)))
  feats, (m, r, v_row, v_col, _) = leaf_features(p, g, zeros, decays)
  assert feats.shape == (24, 28)
  mix = 1 - decays[2]
  g2 = g ** 2 + 1e-30
  np.testing.assert_allclose(v_row, mix * g2.mean(axis=1)[:, None], rtol=1e-6)  # largest dim: 6
  np.testing.assert_allclose(v_col, mix * g2.mean(axis=0)[:, None], rtol=1e-6)
  row_factor = 1 / np.sqrt(v_row / v_row.mean(axis=0, keepdims=True))
  col_factor = 1 / np.sqrt(v_col)
  fac_g = g[..., None] * row_factor[:, None, :] * col_factor[None, :, :]
  np.testing.assert_allclose(feats[:, 10:13], fac_g.reshape(24, 3), rtol=1e-5)
  np.testing.assert_allclose(feats[:, 2:5], (1 - decays[0]) * np.broadcast_to(
      np.asarray(g)[..., None], (4, 6, 3)).reshape(24, 3), rtol=1e-6)
  np.testing.assert_allclose(feats[:, 5], (1 - 0.999) * np.ravel(g) ** 2, rtol=1e-4)  # f32 1-d


def test_adafac_decays_start_at_their_initial_values_and_are_learnable():
  lopt = lopt_meta.AdafacMLPLOpt()
  theta = lopt.init_theta(KEY)
  mom, rms, fac = lopt._decays(theta)
  np.testing.assert_allclose(mom, [0.9, 0.99, 0.999], rtol=1e-5)
  np.testing.assert_allclose(rms, [0.999], rtol=1e-5)
  moved = dict(theta, momentum_decays=jnp.asarray([0.1, 0.0, 0.0]))
  assert float(lopt._decays(moved)[0][0]) < 0.9  # a positive offset shortens the memory


def test_adam_sgdm_are_optax():
  params = _params()
  grads = jax.tree.map(jnp.cos, params)
  for lopt, tx in ((lopt_meta.Adam(learning_rate=3e-3), optax.adam(3e-3)),
                   (lopt_meta.SGDM(learning_rate=0.05, momentum=0.8), optax.sgd(0.05, 0.8))):
    s1, s2 = lopt.init(params), tx.init(params)
    for _ in range(3):
      u1, s1 = lopt.update({}, grads, s1, params)
      u2, s2 = tx.update(grads, s2, params)
      for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
        np.testing.assert_array_equal(a, b)


def test_hyperparameter_optimizers_start_as_their_fixed_counterparts():
  params = _params()
  grads = jax.tree.map(jnp.cos, params)
  pairs = ((lopt_meta.HyperAdam(learning_rate=3e-3), optax.adam(3e-3)),
           (lopt_meta.LRScheduleSGDM(learning_rate=0.05, momentum=0.9), optax.sgd(0.05, 0.9)))
  for lopt, tx in pairs:
    theta = lopt.init_theta(KEY)
    s1, s2 = lopt.init(params), tx.init(params)
    for _ in range(4):
      u1, s1 = lopt.update(theta, grads, s1, params)
      u2, s2 = tx.update(grads, s2, params)
      for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-9)


def test_lr_schedule_interpolates_between_knots():
  lopt = lopt_meta.LRScheduleSGDM(horizon=100, num_knots=3)
  theta = jnp.log(jnp.asarray([1.0, 0.1, 0.01]))
  rates = [float(lopt.learning_rate_at(theta, t)) for t in (0, 25, 50, 100, 150)]
  np.testing.assert_allclose(rates, [1.0, np.exp(np.log(1.0) / 2 + np.log(0.1) / 2), 0.1, 0.01,
                                     0.01], rtol=1e-5)


@pytest.mark.parametrize("name", sorted(lopt_meta.OPTIMIZERS))
def test_optimizer_contract(name):
  """Every optimizer: jit-compatible, state shapes and dtypes stable through lax.cond and scan,
  finite updates, float32 theta, and usable as an optax transformation inside optax.chain."""
  lopt = lopt_meta.get_optimizer(name)
  theta = lopt.init_theta(KEY)
  for leaf in jax.tree.leaves(theta):
    assert leaf.dtype == jnp.float32
  params = _params()
  state = lopt.init(params)
  grads = jax.tree.map(jnp.cos, params)
  update = jax.jit(lambda s: lopt.update(theta, grads, s, params, loss=jnp.float32(1.0)))
  updates, new_state = update(state)
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state)):
    assert a.shape == b.shape and a.dtype == b.dtype
  for u in jax.tree.leaves(updates):
    assert np.all(np.isfinite(u))
  kept = jax.lax.cond(True, lambda s: update(s)[1], lambda s: s, state)  # both branches typed alike
  assert jax.tree.structure(kept) == jax.tree.structure(state)
  scanned, _ = jax.lax.scan(lambda s, _: (update(s)[1], None), state, None, length=3)
  looped = state
  for _ in range(3):
    looped = update(looped)[1]
  assert_trees_within_ulps(scanned, looped, ulps=4)  # the scan carries the state it returns
  tx = optax.chain(optax.clip_by_global_norm(1.0), lopt.as_optax(theta))
  u, _ = tx.update(grads, tx.init(params), params, loss=jnp.float32(1.0))
  assert jax.tree.structure(u) == jax.tree.structure(params)


def test_unknown_optimizer_and_option_rejected():
  with pytest.raises(ValueError) as err:
    lopt_meta.get_optimizer("lolv3")
  assert str(err.value) == ("lopt: unknown lopt 'lolv3'; valid: adafac, adam, anchored_adam, hyper_adam, "
                            "lr_schedule, mlp, nominal_mlp, sgdm")
  with pytest.raises(ValueError, match="^hidden: lopt 'mlp' takes no option 'hidden'; valid: "):
    lopt_meta.get_optimizer("mlp", hidden=3)


def test_as_optax_needs_params():
  lopt = lopt_meta.MLPLOpt()
  tx = lopt.as_optax(lopt.init_theta(KEY))
  params = _params()
  with pytest.raises(ValueError, match="needs params"):
    tx.update(params, tx.init(params))


def test_nominal_mlp_lopt_before_meta_training_is_adam():
  """NominalMLPLOpt at init_theta is optax.adam(learning_rate) step for step (20 steps, jitted;
  within 4 ulps: the same arithmetic, compiled as another program, may fuse a multiply-add
  differently): its learned step is exactly zero and its nominal step is Adam's arithmetic."""
  lopt = lopt_meta.NominalMLPLOpt(learning_rate=3e-3)
  theta = lopt.init_theta(KEY)
  adam = optax.adam(3e-3)
  params_l = params_a = _params()
  state_l, state_a = lopt.init(params_l), adam.init(params_a)
  step_l = jax.jit(lambda g, s, p: lopt.update(theta, g, s, p))
  step_a = jax.jit(adam.update)
  for i in range(20):
    grads = jax.tree.map(lambda p: jnp.sin(3.0 * p + i), params_l)  # the same gradients for both
    u_l, state_l = step_l(grads, state_l, params_l)
    u_a, state_a = step_a(grads, state_a, params_a)
    assert_trees_within_ulps(u_l, u_a, ulps=4)
    params_l = params_a = optax.apply_updates(params_l, u_l)


def test_nominal_mlp_lopt_theta_moves_rate_and_learned_step():
  """log_lr_scale multiplies the nominal step by exp(log_lr_scale); a nonzero last layer adds
  the per-parameter MLP's step (MLPLOpt's formula on the 12 normalized features)."""
  lopt = lopt_meta.NominalMLPLOpt()
  theta = lopt.init_theta(KEY)
  params = _params()
  grads = jax.tree.map(jnp.cos, params)
  base, _ = lopt.update(theta, grads, lopt.init(params), params)
  scaled, _ = lopt.update({**theta, "log_lr_scale": jnp.log(jnp.float32(2.0))}, grads,
                          lopt.init(params), params)
  for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(scaled)):
    np.testing.assert_allclose(b, 2.0 * a, rtol=1e-6)
  mlp = {**theta["mlp"], "w2": jnp.ones_like(theta["mlp"]["w2"])}
  moved, _ = lopt.update({**theta, "mlp": mlp}, grads, lopt.init(params), params)
  diff = features.flatten(moved) - features.flatten(base)
  assert float(jnp.max(jnp.abs(diff))) > 1e-4  # the learned step is on


def test_nominal_mlp_lopt_rejects_beta1_outside_momenta():
  with pytest.raises(ValueError, match=r"^beta1: 0\.8 must be one of momentum_decays"):
    lopt_meta.NominalMLPLOpt(beta1=0.8)
