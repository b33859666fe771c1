"""The fused key derivation is bit-identical to jax.random (and falls back to it where it cannot)."""

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp
import numpy as np
import pytest

from meta_train import keys

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
