"""The fused key derivation is bit-identical to jax.random (and falls back to it where it cannot);
every public function that takes a key takes typed and raw (``jax.random.PRNGKey``) keys alike,
with the same results, and refuses anything else with one clear error.

The quick tier (``-m "not slow"``) runs the estimates with both kinds of keys for NRES, FullES and
truncated backprop (and every estimator's refusal of bad keys); the ``slow`` cases add PES, GPES
and truncated ES (NRES's window engine), Lorenz, and FullES and truncated backprop under the
user's jit and vmap."""

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt_meta
import tasks
from lopt_meta.errors import ConfigError
from lopt_meta.prng import as_typed_key
from meta_train.command import evaluation
from meta_train.engine import keys
from meta_train.estimators import ESTIMATORS, NRES
from meta_train.engine.trainer import Trainer
from tests import systems

SEEDS = [0, 1, 42, 2**31 - 1]


def _data(k):
  return np.asarray(jax.random.key_data(k))


def test_threefry2x32_matches_the_primitive():
  rng = np.random.default_rng(0)
  k1, k2, x1, x2 = (jnp.asarray(rng.integers(0, 2**32, 257, dtype=np.uint64).astype(np.uint32))
                    for _ in range(4))
  ours = jax.jit(keys.threefry2x32)(k1, k2, x1, x2)
  ref = jex_random.threefry2x32_p.bind(k1, k2, x1, x2)
  for a, b in zip(ours, ref):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("seed", SEEDS)
def test_split_fold_in_normal_match_jax_random(seed):
  key = jax.random.key(seed)
  np.testing.assert_array_equal(_data(keys.split(key, 37)), _data(jax.random.split(key, 37)))
  data = jnp.asarray([0, 1, 2, 299, 2**20 + 3, 2**31 - 1], jnp.int32)
  np.testing.assert_array_equal(_data(keys.fold_in(key, data)),
                                _data(jax.vmap(jax.random.fold_in, (None, 0))(key, data)))
  many = jax.random.split(key, 6)
  np.testing.assert_array_equal(_data(keys.fold_in(many, data)),
                                _data(jax.vmap(jax.random.fold_in)(many, data)))
  grid = keys.fold_in(many[:, None], data[None, :3])  # [6, 1] keys x [1, 3] data
  assert grid.shape == (6, 3)
  np.testing.assert_array_equal(_data(grid[4, 2]), _data(jax.random.fold_in(many[4], data[2])))
  for size in (1, 2, 7, 1000):
    np.testing.assert_array_equal(np.asarray(keys.normal(many, size)),
                                  np.asarray(jax.vmap(lambda k: jax.random.normal(k, (size,)))(many)))


def test_fused_inside_jit_and_vmap():
  key = jax.random.key(3)
  f = jax.jit(jax.vmap(lambda k, j: keys.normal(keys.fold_in(k, j), 5)))
  ks, js = jax.random.split(key, 4), jnp.arange(4)
  ref = jax.vmap(lambda k, j: jax.random.normal(jax.random.fold_in(k, j), (5,)))(ks, js)
  np.testing.assert_array_equal(np.asarray(f(ks, js)), np.asarray(ref))


@pytest.mark.parametrize("make_key", [
    lambda: jax.random.key(5, impl="rbg"),      # another implementation
    lambda: jax.random.PRNGKey(5),              # a raw uint32 key
])
def test_other_keys_go_through_jax_random(make_key):
  key = make_key()
  np.testing.assert_array_equal(_data(keys.split(key, 3)), _data(jax.random.split(key, 3)))
  np.testing.assert_array_equal(_data(keys.fold_in(key, jnp.int32(7))),
                                _data(jax.random.fold_in(key, 7)))
  ks = jax.random.split(key, 2)
  if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    assert keys.split(key, 3).dtype == jnp.uint32 and keys.split(key, 3).shape == (3, 2)
  np.testing.assert_array_equal(np.asarray(keys.normal(ks, 4)),
                                np.asarray(jax.vmap(lambda k: jax.random.normal(k, (4,)))(ks)))


def test_other_dtypes_go_through_jax_random():
  ks = jax.random.split(jax.random.key(9), 3)
  out = keys.normal(ks, 4, jnp.bfloat16)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_array_equal(
      np.asarray(out, np.float32),
      np.asarray(jax.vmap(lambda k: jax.random.normal(k, (4,), jnp.bfloat16))(ks), np.float32))


# ---------------------------------------------------------------------------------------------
# Public boundaries: typed keys (jax.random.key) and raw uint32[2] keys (jax.random.PRNGKey)
# ---------------------------------------------------------------------------------------------

KINDS = {"typed": jax.random.key, "legacy": jax.random.PRNGKey}


def _bad_key_message(got, name="key"):
  return (f"{name}: must be a typed PRNG key (jax.random.key) or a raw uint32[2] key "
          f"(jax.random.PRNGKey); got {got}")


def _leaves(tree):
  """Every leaf as numpy (typed keys as their data), for exact comparisons."""
  def data(x):
    if jax.dtypes.issubdtype(jnp.asarray(x).dtype, jax.dtypes.prng_key):
      return np.asarray(jax.random.key_data(x))
    return np.asarray(x)
  return [data(x) for x in jax.tree.leaves(tree)]


def _assert_identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(_leaves(a), _leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(x, y)


def _typed_only(system):
  """``system`` whose init and step check that they are handed typed keys."""
  def check(key):
    assert jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == (), key
    return key
  return tasks.UnrolledSystem(init=lambda key: system.init(check(key)),
                              step=lambda theta, s, key: system.step(theta, s, check(key)),
                              horizon=system.horizon, theta0=system.theta0, name=system.name)


def _estimators(system, W):
  return systems.every_estimator(system, N=6, W=W)


def test_as_typed_key_wraps_raw_keys_to_the_same_bits():
  for seed in SEEDS:
    typed = as_typed_key(jax.random.PRNGKey(seed))
    assert jax.dtypes.issubdtype(typed.dtype, jax.dtypes.prng_key) and typed.shape == ()
    np.testing.assert_array_equal(_data(typed), _data(jax.random.key(seed)))
  key = jax.random.key(4)
  assert as_typed_key(key) is key  # a typed key is passed through as it is
  rbg = jax.random.key(4, impl="rbg")
  assert as_typed_key(rbg) is rbg
  np.testing.assert_array_equal(_data(as_typed_key(np.asarray(jax.random.PRNGKey(4)))),
                                _data(key))
  many = as_typed_key(jax.random.split(jax.random.PRNGKey(4), 3), "keys", batch_ndim=1)
  np.testing.assert_array_equal(_data(many), _data(jax.random.split(key, 3)))


def test_as_typed_key_under_jit_and_vmap():
  f = jax.jit(lambda k: jax.random.key_data(as_typed_key(k)))
  np.testing.assert_array_equal(np.asarray(f(jax.random.PRNGKey(7))), _data(jax.random.key(7)))
  np.testing.assert_array_equal(np.asarray(f(jax.random.key(7))), _data(jax.random.key(7)))
  raw = jax.random.split(jax.random.PRNGKey(7), 4)
  g = jax.jit(jax.vmap(lambda k: jax.random.normal(as_typed_key(k), (3,))))
  np.testing.assert_array_equal(np.asarray(g(raw)),
                                np.asarray(g(jax.random.split(jax.random.key(7), 4))))
  with pytest.raises(ConfigError, match=r"got float32\[2\]"):
    jax.jit(as_typed_key)(jnp.zeros(2))


@pytest.mark.parametrize("bad, got", [
    (jnp.zeros(2, jnp.float32), "float32[2]"),
    (jnp.zeros(3, jnp.uint32), "uint32[3]"),
    (jnp.zeros((), jnp.uint32), "uint32[]"),
    (jnp.zeros(2, jnp.int32), "int32[2]"),
    (jax.random.split(jax.random.PRNGKey(0), 3), "uint32[3,2]"),   # a batch where one is expected
    (jax.random.split(jax.random.key(0), 3), "key<fry>[3]"),
    (0, "int"),                                                       # a seed is not a key
])
def test_as_typed_key_refuses_anything_else(bad, got):
  with pytest.raises(ConfigError) as info:
    as_typed_key(bad)
  assert str(info.value) == _bad_key_message(got)
  assert info.value.field == "key"
  if got not in ("uint32[3,2]", "key<fry>[3]"):  # those two are a valid batch of keys
    with pytest.raises(ConfigError) as info:
      as_typed_key(bad, "keys", batch_ndim=1)
    assert info.value.field == "keys" and str(info.value).endswith(f"; got {got}")


def test_every_estimator_is_covered():
  assert set(_estimators(systems.recorder(), 3)) == set(ESTIMATORS)


# Keys are made typed where the estimators take them (their base class, the window engine and the
# workers): the recorder (random init and steps; W !| T) runs NRES, FullES and truncated backprop
# in the quick tier; PES, GPES and truncated ES (NRES's window engine with other noise rules), and
# Lorenz (random initial conditions; W | T) for every estimator, are slow.
_KEYED_SYSTEMS = (("recorder", systems.recorder(7), 3),
                  ("lorenz", tasks.get("lorenz", horizon=12, init_sigma=0.5), 4))


@pytest.mark.parametrize("name, system, W", [
    pytest.param(name, system, W, id=f"{label}-{name}",
                 marks=() if label == "recorder" and name in ("nres", "full_es", "tbptt")
                 else pytest.mark.slow)
    for label, system, W in _KEYED_SYSTEMS for name in sorted(ESTIMATORS)])
def test_legacy_and_typed_keys_give_identical_estimates(name, system, W):
  """For the same seeds, init and a few outer steps are bit-identical, and the system is handed
  typed keys either way."""
  est = _estimators(_typed_only(system), W)[name]
  runs = {}
  for kind, make in KINDS.items():
    theta = system.theta0
    ws = est.init(make(0), theta)
    out = [ws]
    for i in range(3):
      grad, ws, metrics = est.estimate(make(100 + i), theta, ws)
      out.append((grad, ws, metrics))
      theta = jax.tree.map(lambda t, g: t - 1e-3 * g, theta, grad)  # theta moves between steps
    runs[kind] = out
  _assert_identical(runs["typed"], runs["legacy"])


# NRES in the quick tier; FullES and truncated backprop (slow) take the same raw keys through
# their own init_fn/estimate_fn.
@pytest.mark.parametrize("name", ["nres", pytest.param("full_es", marks=pytest.mark.slow),
                                  pytest.param("tbptt", marks=pytest.mark.slow)])
def test_legacy_keys_inside_jit_and_vmap(name):
  """The pure ``init_fn``/``estimate_fn`` under the user's own jit (tracers of raw keys), and
  init + estimate vmapped over a batch of raw keys."""
  system = systems.recorder(7)
  est = _estimators(system, 3)[name]
  theta = system.theta0

  @jax.jit
  def init_and_estimate(k_init, k_est):
    ws = est.init_fn(k_init, theta, None)
    return est.estimate_fn(k_est, theta, ws, None)
  _assert_identical(init_and_estimate(jax.random.key(1), jax.random.key(2)),
                    init_and_estimate(jax.random.PRNGKey(1), jax.random.PRNGKey(2)))
  _assert_identical(systems.replicate_estimates(est, theta, jax.random.key(3), 3),
                    systems.replicate_estimates(est, theta, jax.random.PRNGKey(3), 3))


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_estimators_refuse_bad_keys(name):
  system = systems.recorder(7)
  est = _estimators(system, 3)[name]
  theta = system.theta0
  ws = est.init(jax.random.key(0), theta)
  for bad, got in [(jnp.zeros(2, jnp.float32), "float32[2]"),
                   (jnp.zeros(3, jnp.uint32), "uint32[3]"),
                   (jax.random.split(jax.random.key(0), 2), "key<fry>[2]")]:
    for call in (lambda k: est.init(k, theta), lambda k: est.estimate(k, theta, ws),
                 lambda k: jax.jit(est.init_fn)(k, theta, None)):
      with pytest.raises(ConfigError) as info:
        call(bad)
      assert str(info.value) == _bad_key_message(got)


def test_trainer_with_legacy_and_typed_keys_is_identical():
  system = systems.recorder(7)
  trainer = Trainer(NRES(system, num_particles=6, sigma=0.1, unroll_length=3), optax.adam(1e-2))
  out = {}
  for kind, make in KINDS.items():
    state = trainer.init(make(0), system.theta0)
    assert jax.dtypes.issubdtype(state.key.dtype, jax.dtypes.prng_key)  # typed either way
    out[kind] = trainer.run(state, 3)
  _assert_identical(out["typed"], out["legacy"])
  # A state that carries a raw key (built by hand) runs the same steps.
  state = trainer.init(jax.random.key(0), system.theta0)
  raw = state.replace(key=jax.random.key_data(state.key))
  _assert_identical(trainer.run(raw, 3), out["typed"])
  with pytest.raises(ConfigError) as info:
    trainer.init(jnp.zeros(2), system.theta0)
  assert str(info.value) == _bad_key_message("float32[2]")
  with pytest.raises(ConfigError) as info:
    trainer.run(state.replace(key=jnp.zeros(3, jnp.uint32)), 1)
  assert str(info.value) == _bad_key_message("uint32[3]", name="state.key")


def test_system_evaluation_entry_points_with_legacy_and_typed_keys():
  system = _typed_only(tasks.get("lorenz", horizon=12, init_sigma=0.5))
  theta = system.theta0
  for seed in (0, 5):
    typed, legacy = jax.random.key(seed), jax.random.PRNGKey(seed)
    _assert_identical(system.episode_losses(theta, typed), system.episode_losses(theta, legacy))
    _assert_identical(system.mean_loss(theta, typed, 3), system.mean_loss(theta, legacy, 3))
    state0 = system.init(typed)
    _assert_identical(system.unroll(theta, state0, jax.random.split(typed, 5)),
                      system.unroll(theta, state0, jax.random.split(legacy, 5)))
    curve = evaluation.curve_fn(system, 2, 12)  # the evaluator's compiled curve
    _assert_identical(curve(theta, typed, None), curve(theta, legacy, None))
  with pytest.raises(ConfigError) as info:
    system.mean_loss(theta, jnp.zeros(2))
  assert str(info.value) == _bad_key_message("float32[2]")
  with pytest.raises(ConfigError) as info:
    system.unroll(theta, system.init(jax.random.key(0)), jax.random.key(0))  # one key, not [n]
  assert str(info.value) == (
      "keys: must be a key[n] array of typed PRNG keys (jax.random.key) or raw uint32[n,2] keys "
      "(jax.random.PRNGKey); got key<fry>[]")


@pytest.mark.parametrize("name", sorted(lopt_meta.OPTIMIZERS))
def test_init_theta_with_legacy_and_typed_keys(name):
  lopt = lopt_meta.get_optimizer(name)
  _assert_identical(lopt.init_theta(jax.random.key(3)), lopt.init_theta(jax.random.PRNGKey(3)))
  with pytest.raises(ConfigError) as info:
    lopt.init_theta(jnp.zeros(2))
  assert str(info.value) == _bad_key_message("float32[2]")


def test_inner_task_and_learned_optimizer_system_init_with_legacy_and_typed_keys():
  task = tasks.build("digits_mlp")
  typed, legacy = jax.random.key(2), jax.random.PRNGKey(2)
  _assert_identical(task.init_params(typed), task.init_params(legacy))
  _assert_identical(task.init_state(typed), task.init_state(legacy))
  system = tasks.learned_optimizer_system(task, lopt_meta.MLPLOpt(), horizon=4).bound()
  _assert_identical(system.init(typed), system.init(legacy))
  with pytest.raises(ConfigError) as info:
    system.init(jnp.zeros(2))
  assert str(info.value) == _bad_key_message("float32[2]")
