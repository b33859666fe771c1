"""The fused CPU kernels agree with their plain-JAX references, under jit, vmap and grad."""

import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt_meta import kernels


def _close(got, want, rtol=2e-5):
  """Equal up to float reassociation: relative to each value and to the output's magnitude."""
  want = np.asarray(want)
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.max(np.abs(want)))


def test_kernel_is_built_where_a_compiler_exists():
  if not (shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")):
    pytest.skip("no C++ compiler on this machine: the plain-JAX path is used (and tested)")
  assert kernels.available()


def _supported_isas():
  """The kernel's instruction-set levels this CPU runs (each is tested: a machine with AVX-512
  also checks the AVX2 and portable paths)."""
  if not kernels.available():
    return []
  best = kernels.ISAS.index(kernels.isa())
  return list(kernels.ISAS[:best + 1])


@pytest.fixture(params=kernels.ISAS)
def isa(request):
  """Runs the test with the kernels lowered to one instruction set (skipped where the CPU lacks
  it), then restores the best."""
  if request.param not in _supported_isas():
    pytest.skip(f"this CPU (or build) has no {request.param} kernel path")
  best = kernels.isa()
  assert kernels.set_isa(request.param) == request.param
  yield request.param
  kernels.set_isa(best)


def test_set_isa_rejects_an_unknown_name():
  if not kernels.available():
    pytest.skip("no kernels")
  with pytest.raises(ValueError, match=r"^isa: unknown instruction set 'sse'; expected one of "
                     r"generic, avx2, avx512$"):
    kernels.set_isa("sse")


def _mlp_args(key, batch, rows, features, hidden):
  ks = jax.random.split(key, 7)
  h1, h2 = hidden
  shapes = [batch + (rows, features), batch + (h1,), batch + (features, h1), batch + (h1, h2),
            batch + (h2,), batch + (h2, 2), batch + (2,)]
  return [jax.random.normal(k, s) * (0.5 if i > 1 else 1.0) for i, (k, s) in enumerate(zip(ks, shapes))]


@pytest.mark.parametrize("batch, rows, features, hidden", [
    ((), 37, 8, (32, 32)),        # vector paths with a remainder block
    ((3,), 64, 8, (32, 32)),
    ((2, 2), 19, 28, (4, 4)),     # portable path (AdafacMLPLOpt's sizes)
    ((), 5, 12, (16, 24)),
])
def test_per_parameter_mlp_matches_reference(batch, rows, features, hidden, isa):
  args = _mlp_args(jax.random.key(rows), batch, rows, features, hidden)
  kw = {"exp_mult": 1e-3, "step_mult": 1e-3}
  got = jax.jit(lambda *a: kernels.per_parameter_mlp(*a, **kw))(*args)
  want = kernels.per_parameter_mlp_reference(*args, **kw)
  assert got.shape == batch + (rows,)
  _close(got, want)


OFFSETS = (0, 1, 33, 40, 71, 72)  # tensors of 1, 32, 7, 31 and 1 parameters


def _lopt_args(key, batch, K=6):
  R = OFFSETS[-1]
  ks = jax.random.split(key, 4)
  g = jax.random.normal(ks[0], batch + (R,))
  p = jax.random.normal(ks[1], batch + (R,))
  m = jax.random.normal(ks[2], batch + (K, R)) * 0.3
  decays = jnp.broadcast_to(jnp.asarray([0.1, 0.5, 0.9, 0.99, 0.999, 0.9999][:K]), batch + (K,))
  return [g, p, m, decays] + _mlp_args(ks[3], batch, R, K + 2, (32, 32))[1:]


@pytest.mark.parametrize("batch", [(), (4,)])
def test_mlp_lopt_update_matches_reference(batch, isa):
  args = _lopt_args(jax.random.key(1), batch)
  kw = {"offsets": OFFSETS, "exp_mult": 1e-3, "step_mult": 1e-3}
  (step, m_new) = jax.jit(lambda *a: kernels.mlp_lopt_update(*a, **kw))(*args)
  (step_ref, m_ref) = kernels.mlp_lopt_update_reference(*args, **kw)
  np.testing.assert_allclose(m_new, m_ref, rtol=1e-6, atol=1e-7)
  _close(step, step_ref)


def test_nested_vmap_matches_reference(isa):
  args = _lopt_args(jax.random.key(2), (3, 2))
  kw = {"offsets": OFFSETS, "exp_mult": 1e-3, "step_mult": 1e-3}
  f = lambda *a: kernels.mlp_lopt_update(*a, **kw)[0]
  got = jax.jit(jax.vmap(jax.vmap(f)))(*args)
  want = jax.vmap(jax.vmap(lambda *a: kernels.mlp_lopt_update_reference(*a, **kw)[0]))(*args)
  _close(got, want)


def test_gradients_come_from_the_reference():
  args = _mlp_args(jax.random.key(3), (), 21, 8, (32, 32))
  kw = {"exp_mult": 0.1, "step_mult": 0.1}

  def loss(fn, w2):
    a = list(args)
    a[3] = w2
    return jnp.sum(fn(*a, **kw) ** 2)

  got = jax.grad(lambda w: loss(kernels.per_parameter_mlp, w))(args[3])
  want = jax.grad(lambda w: loss(kernels.per_parameter_mlp_reference, w))(args[3])
  _close(got, want, rtol=1e-5)


def test_kernels_can_be_switched_off():
  code = ("import warnings, jax, jax.numpy as jnp; from lopt_meta import kernels;"
          "assert not kernels.available();"
          "x = jnp.ones((2, 5, 8)); w = jnp.ones((8, 32)) * 0.1;"
          "out = kernels.per_parameter_mlp(x, jnp.zeros(32), w, jnp.eye(32), jnp.zeros(32),"
          " jnp.ones((32, 2)), jnp.zeros(2), exp_mult=1e-3, step_mult=1e-3);"
          "print(out.shape)")
  env = dict(os.environ, LOPT_META_KERNELS="0", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "(2, 5)"
