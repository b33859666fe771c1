"""The fused CPU kernels agree with their plain-JAX references, under jit, vmap and grad."""

import hashlib
import os
import platform
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt_meta import kernels
from tests.paths import kernel_path  # noqa: F401  (the fixture)


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


def _mlp_float64(x, c, w1, w2, b2, w3, b3, *, exp_mult, step_mult, cotangent=None):
  """The per-parameter MLP in float64 NumPy, one row per parameter (``x [..., R, F]``), written
  out here (independent of JAX and of the kernels' reference, which works on columns): the steps
  ``[..., R]`` and, given a ``cotangent`` ``u [..., R]``, the gradients of ``sum(u * steps)``
  with respect to every argument, backpropagated by hand."""
  x, c, w1, w2, b2, w3, b3 = (np.asarray(a, np.float64) for a in (x, c, w1, w2, b2, w3, b3))
  a1 = np.einsum("...rf,...fh->...rh", x, w1) + c[..., None, :]
  h1 = np.maximum(a1, 0.0)
  a2 = np.einsum("...rh,...hk->...rk", h1, w2) + b2[..., None, :]
  h2 = np.maximum(a2, 0.0)
  out = np.einsum("...rk,...ko->...ro", h2, w3) + b3[..., None, :]
  scale = np.exp(out[..., 1] * exp_mult) * step_mult
  step = out[..., 0] * scale
  if cotangent is None:
    return step
  u = np.asarray(cotangent, np.float64)
  d_out = np.stack([u * scale, u * step * exp_mult], axis=-1)  # d/d direction, d/d magnitude
  d_w3 = np.einsum("...rk,...ro->...ko", h2, d_out)
  d_a2 = np.einsum("...ro,...ko->...rk", d_out, w3) * (a2 > 0)
  d_w2 = np.einsum("...rh,...rk->...hk", h1, d_a2)
  d_a1 = np.einsum("...rk,...hk->...rh", d_a2, w2) * (a1 > 0)
  d_w1 = np.einsum("...rf,...rh->...fh", x, d_a1)
  d_x = np.einsum("...rh,...fh->...rf", d_a1, w1)
  return step, (d_x, d_a1.sum(-2), d_w1, d_w2, d_a2.sum(-2), d_w3, d_out.sum(-2))


@pytest.mark.parametrize("batching", ["none", "batch_dims", "vmap"])
def test_gradients_match_a_hand_derived_backward_pass(kernel_path, batching):
  """jax.grad of ``sum(u * per_parameter_mlp(...))`` with respect to all seven arguments (the
  features and every weight), and the value computed with it, on the path under test, equal
  :func:`_mlp_float64`'s float64 hand-written backward pass to float32 accuracy: unbatched,
  with a leading particle axis (each particle its own weights), and under jax.vmap."""
  batch = () if batching == "none" else (3,)
  args = _mlp_args(jax.random.key(3), batch, 21, 8, (32, 32))
  u = jax.random.normal(jax.random.key(4), batch + (21,))
  kw = {"exp_mult": 0.1, "step_mult": 0.1}
  mlp = lambda *a: kernels.per_parameter_mlp(*a, **kw)
  if batching == "vmap":
    mlp = jax.vmap(mlp)
  loss = lambda *a: jnp.sum(u * mlp(*a))
  value, grads = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(7))))(*args)
  want_step, want_grads = _mlp_float64(*args, **kw, cotangent=u)
  np.testing.assert_allclose(value, np.sum(np.asarray(u, np.float64) * want_step), rtol=1e-5)
  for name, got, want in zip(("x", "c", "w1", "w2", "b2", "w3", "b3"), grads, want_grads):
    assert got.shape == want.shape, name
    assert np.max(np.abs(want)) > 0, name  # a zero gradient would be a vacuous comparison
    _close(got, want, rtol=1e-5)


def test_kernels_can_be_switched_off(tmp_path):
  """With ``LOPT_META_KERNELS=0`` a fresh interpreter builds and loads no kernel, gives no
  warning about it, and computes the steps of :func:`_mlp_float64` (to float32 accuracy)."""
  args = [np.asarray(a) for a in _mlp_args(jax.random.key(5), (2,), 5, 8, (32, 32))]
  np.savez(tmp_path / "args.npz", *args)
  code = ("import sys, warnings, numpy as np, jax; from lopt_meta import kernels\n"
          "with warnings.catch_warnings(record=True) as caught:\n"
          "  warnings.simplefilter('always')\n"
          "  assert not kernels.available()\n"
          "  with np.load(sys.argv[1]) as f: args = [f[f'arr_{i}'] for i in range(7)]\n"
          "  out = kernels.per_parameter_mlp(*args, exp_mult=1e-3, step_mult=1e-3)\n"
          "assert not [w for w in caught if 'lopt_meta' in str(w.message)], caught\n"
          "assert kernels._load.cache_info().misses == 0  # nothing was built or loaded\n"
          "np.save(sys.argv[2], np.asarray(out))\n")
  env = dict(os.environ, LOPT_META_KERNELS="0", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "args.npz"),
                           str(tmp_path / "out.npy")], env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  got = np.load(tmp_path / "out.npy")
  assert got.dtype == np.float32 and got.shape == (2, 5)
  _close(got, _mlp_float64(*args, exp_mult=1e-3, step_mult=1e-3))


def _bitwise_cases():
  """Fixed inputs that reach every part of the kernels: whole and partial row blocks of every
  level, the portable path's other hidden sizes, phase 1's vector bodies and tails, a tensor split
  into several pieces, and a zero last bias (signs of zero)."""
  rs = np.random.RandomState(0)
  cases = {}
  for name, batch, rows, features, (h1, h2) in [("dense_37", (), 37, 8, (32, 32)),
                                                ("dense_3x64", (3,), 64, 8, (32, 32)),
                                                ("dense_2x9001", (2,), 9001, 19, (32, 32)),
                                                ("dense_4x4", (2, 2), 19, 28, (4, 4)),
                                                ("dense_16x24", (), 5, 12, (16, 24))]:
    shapes = [batch + (rows, features), batch + (h1,), batch + (features, h1), batch + (h1, h2),
              batch + (h2,), batch + (h2, 2), batch + (2,)]
    a = [(rs.randn(*s) * (0.5 if i > 1 else 1.0)).astype(np.float32) for i, s in enumerate(shapes)]
    if name == "dense_37":
      a[6][...] = 0.0
    cases[name] = (kernels.per_parameter_mlp, a, {"exp_mult": 1e-3, "step_mult": 1e-3})
  for name, batch, offsets, K in [("lopt_72", (4,), OFFSETS, 6),
                                  ("lopt_30001", (2,), (0, 20000, 20017, 30001), 3),
                                  ("lopt_3003", (), (0, 5, 3000, 3003), 1)]:
    R = offsets[-1]
    g, p = (rs.randn(*batch, R).astype(np.float32) for _ in range(2))
    m = (rs.randn(*batch, K, R) * 0.3).astype(np.float32)
    decays = np.broadcast_to(np.float32([0.1, 0.5, 0.9, 0.99, 0.999, 0.9999][:K]), batch + (K,))
    shapes = [(32,), (K + 2, 32), (32, 32), (32,), (32, 2), (2,)]
    w = [(rs.randn(*batch, *s) * 0.5).astype(np.float32) for s in shapes]
    cases[name] = (kernels.mlp_lopt_update, [g, p, m, decays] + w,
                   {"offsets": offsets, "exp_mult": 1e-2, "step_mult": 1e-3})
  return cases


def _digests():
  """sha256 (16 hex digits) of every case's outputs, at the level now in use."""
  digests = {}
  for name, (fn, args, kw) in _bitwise_cases().items():
    out = jax.jit(lambda *a, fn=fn, kw=kw: fn(*a, **kw))(*args)
    data = b"".join(np.asarray(x, np.float32).tobytes() for x in jax.tree.leaves(out))
    digests[name] = hashlib.sha256(data).hexdigest()[:16]
  return digests


# _digests() at each level, recorded with the kernel as it was before its three paths became one
# template (commit d69f65c), built by GCC 12.2 on x86-64. Another compiler may round the portable
# path differently (C++ lets it fuse a * b + c into one FMA), so the test runs with this one only.
_RECORDED_COMPILER = "(Debian 12.2.0-14+deb12u1) 12.2.0"
_RECORDED_DIGESTS = {
    "generic": {
        "dense_37": "dfa7370c413fb114", "dense_3x64": "0171e2422001d68a",
        "dense_2x9001": "b75f5b4f0db4dcff", "dense_4x4": "2914d8d435559d36",
        "dense_16x24": "9ef8c572ee131214", "lopt_72": "46d259f024e58c91",
        "lopt_30001": "dbf574d87ba8c441", "lopt_3003": "c65592f8e17be544",
    },
    "avx2": {
        "dense_37": "828afe60edc7a266", "dense_3x64": "c80b07bc7dd242cc",
        "dense_2x9001": "a9ac0eae504805e7", "dense_4x4": "2914d8d435559d36",
        "dense_16x24": "9ef8c572ee131214", "lopt_72": "08d0f4d0587fc935",
        "lopt_30001": "9c053ba39ad1be0d", "lopt_3003": "4848802076db4097",
    },
    "avx512": {
        "dense_37": "29c011d70c4d7ecf", "dense_3x64": "679dd00304231660",
        "dense_2x9001": "f554d9642cd8708d", "dense_4x4": "2914d8d435559d36",
        "dense_16x24": "9ef8c572ee131214", "lopt_72": "6ba3ce9d7a5a201f",
        "lopt_30001": "b1269690576e0fa4", "lopt_3003": "7d44c05c0fbcf0bb",
    },
}


def test_every_level_gives_the_recorded_bits(isa):
  compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
  version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
  if platform.machine() != "x86_64" or _RECORDED_COMPILER not in version.split("\n")[0]:
    pytest.skip("the recorded bits are from GCC 12.2 on x86-64")
  assert _digests() == _RECORDED_DIGESTS[isa]


@pytest.mark.parametrize("own_weights", [True, False])
def test_plain_path_runs_particles_with_their_own_weights_as_a_loop(monkeypatch, own_weights):
  """With the kernel off (the path GPUs and TPUs run), a vmap over particles that each have their
  own weights runs on CPU as a loop of unbatched calls (XLA:CPU runs batched matmuls of these
  thin shapes several times slower), and shared weights as one batch. Values and gradients are
  the reference's either way."""
  monkeypatch.setenv("LOPT_META_KERNELS", "0")
  assert not kernels.available()
  args = _lopt_args(jax.random.key(4), (4,))
  if not own_weights:
    args = args[:4] + [a[0] for a in args[4:]]
  in_axes = (0,) * 4 + (0 if own_weights else None,) * 6
  kw = {"offsets": OFFSETS, "exp_mult": 0.1, "step_mult": 0.1}
  plain = jax.jit(jax.vmap(lambda *a: kernels.mlp_lopt_update(*a, **kw), in_axes=in_axes))
  reference = jax.vmap(lambda *a: kernels.mlp_lopt_update_reference(*a, **kw), in_axes=in_axes)
  (step, m_new), (step_ref, m_ref) = plain(*args), reference(*args)
  _close(step, step_ref)
  np.testing.assert_array_equal(m_new, m_ref)
  assert ("stablehlo.while" in plain.lower(*args).as_text()) == own_weights

  def loss(fn, w2):
    a = list(args)
    a[6] = w2
    return jnp.sum(jax.vmap(lambda *x: fn(*x, **kw)[0], in_axes=in_axes)(*a) ** 2)
  got = jax.grad(lambda w: loss(kernels.mlp_lopt_update, w))(args[6])
  want = jax.grad(lambda w: loss(kernels.mlp_lopt_update_reference, w))(args[6])
  _close(got, want, rtol=1e-5)
