"""Fused CPU kernel for the per-parameter MLP of the learned optimizers (XLA FFI custom call).

:func:`per_parameter_mlp` computes, for every row of ``x [..., R, F]``::

    h1 = relu(x @ w1 + c);  h2 = relu(h1 @ w2 + b2);  d, m = h2 @ w3 + b3
    step = d * exp(m * exp_mult) * step_mult                         # [..., R]

On CPU it runs ``per_parameter_mlp.cc``: all three layers over blocks of rows held in registers
(XLA's own matmuls run these thin shapes, K = 8..32 and N = 2..32, at a small fraction of the
machine's peak), with AVX-512 or AVX2 + FMA code where the CPU has it (:func:`isa`). Everywhere
else (GPU, TPU) and when the kernel is unavailable it runs the same arithmetic in plain JAX
(:func:`per_parameter_mlp_reference`). Derivatives (for truncated backprop through the
optimizer) come from the reference, through ``jax.custom_jvp``.

The kernel is compiled once per machine, at first use, with the system's C++ compiler (``$CXX``
or ``c++``) into ``$LOPT_META_CACHE_DIR`` (default ``~/.cache/lopt_meta``), and only when JAX's
default backend is the CPU: on GPU/TPU no compiler is looked for, nothing is built or loaded, and
the reference runs. With ``LOPT_META_KERNELS=0`` the reference runs too; without a compiler (or
after a failed build) it runs and one warning says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

_SOURCE = Path(__file__).with_name("per_parameter_mlp.cc")
_lock = threading.Lock()
_library: list[ctypes.CDLL] = []  # the loaded kernel library, once built
ISAS = ("generic", "avx2", "avx512")  # instruction-set levels of the kernel, lowest first


def cache_dir() -> Path:
  root = os.environ.get("LOPT_META_CACHE_DIR")
  if root:
    return Path(root)
  xdg = os.environ.get("XDG_CACHE_HOME")
  return (Path(xdg) if xdg else Path.home() / ".cache") / "lopt_meta"


def _build() -> Path:
  """Compiles the kernel (if not cached) and returns the shared library's path."""
  compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
  if compiler is None:
    raise RuntimeError("no C++ compiler found (set $CXX)")
  include = jax.ffi.include_dir()
  source = _SOURCE.read_bytes()
  tag = hashlib.sha256(source + jax.__version__.encode() + compiler.encode()).hexdigest()[:16]
  folder = cache_dir()
  folder.mkdir(parents=True, exist_ok=True)
  library = folder / f"per_parameter_mlp-{tag}.so"
  if library.exists():
    return library
  with tempfile.NamedTemporaryFile(dir=folder, suffix=".so", delete=False) as tmp:
    partial = Path(tmp.name)
  try:
    cmd = [compiler, "-O3", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{include}",
           str(_SOURCE), "-o", str(partial)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
      raise RuntimeError(f"compiling {_SOURCE.name} failed:\n{result.stderr[-2000:]}")
    os.replace(partial, library)  # atomic: concurrent builders never see a partial file
  finally:
    partial.unlink(missing_ok=True)
  return library


def available() -> bool:
  """Whether the fused CPU kernels are in use: JAX's default backend is the CPU, they are not
  switched off (``LOPT_META_KERNELS=0``), and they are built and registered (built on the first
  such call). On any other backend this is False without looking for a compiler."""
  if (os.environ.get("LOPT_META_KERNELS", "1") == "0" or jax.default_backend() != "cpu"
      or _simulating_accelerator()):
    return False
  return _load()


@functools.cache
def _load() -> bool:
  """Builds (or finds in the cache) the kernel library, loads it and registers its FFI targets;
  False, with one warning, when that fails."""
  with _lock:
    try:
      library = ctypes.CDLL(str(_build()))
      _library.append(library)
      for target, symbol in ((_DENSE, "LoptPerParameterMlp"), (_LOPT, "LoptMlpLoptUpdate")):
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)),
                                    platform="cpu")
      return True
    except Exception as error:  # no compiler, failed build: the reference still works
      warnings.warn(f"lopt_meta: fused CPU kernel unavailable ({error}); using the plain JAX "
                    "per-parameter MLP (slower on CPU)", stacklevel=3)
      return False


def isa() -> str:
  """The instruction set the CPU kernels run with, one of :data:`ISAS`: the best this CPU has
  (``avx512``, else ``avx2`` with FMA, else the portable ``generic`` loop) unless lowered with
  :func:`set_isa`. (The vector paths cover hidden sizes 32 x 32, MLPLOpt's; other sizes always
  take the portable loop.)"""
  return ISAS[_kernel_library().LoptIsa()]


def set_isa(name: str) -> str:
  """Lowers (or restores) the instruction set of the CPU kernels, for tests and comparisons:
  ``name`` in :data:`ISAS`, capped at what the CPU has. Takes effect for every kernel call from
  then on, compiled or not. Returns the level now in use."""
  if name not in ISAS:
    raise ValueError(f"isa: unknown instruction set {name!r}; expected one of {', '.join(ISAS)}")
  return ISAS[_kernel_library().LoptSetIsa(ISAS.index(name))]


def _kernel_library() -> ctypes.CDLL:
  if not available():
    raise RuntimeError("the fused CPU kernels are unavailable (no C++ compiler, a failed build, "
                       "or LOPT_META_KERNELS=0)")
  return _library[0]


def per_parameter_mlp_reference(x, c, w1, w2, b2, w3, b3, *, exp_mult: float, step_mult: float):
  """The arithmetic of :func:`per_parameter_mlp` in plain JAX (any platform, differentiable)."""
  return _mlp_on_columns(jnp.swapaxes(x, -1, -2), c, w1, w2, b2, w3, b3, exp_mult=exp_mult,
                         step_mult=step_mult)


def _mlp_on_columns(x, c, w1, w2, b2, w3, b3, *, exp_mult: float, step_mult: float):
  """The per-parameter MLP on features laid out one row per feature, ``x: [..., F, R]``
  (``R`` parameters on the minor axis): ``[..., R]`` steps. Each layer is one matmul
  ``W^T [H, F] @ x [F, R]``; the outputs' rows are the directions and magnitudes."""
  t = lambda w: jnp.swapaxes(w, -1, -2)
  h = jax.nn.relu(jnp.matmul(t(w1), x) + c[..., :, None])
  h = jax.nn.relu(jnp.matmul(t(w2), h) + b2[..., :, None])
  out = jnp.matmul(t(w3), h) + b3[..., :, None]  # [..., 2, R]
  return out[..., 0, :] * jnp.exp(out[..., 1, :] * exp_mult) * step_mult


def mlp_lopt_update_reference(g, p, m, decays, c, w1, w2, b2, w3, b3, *, offsets,
                              exp_mult: float, step_mult: float):
  """:func:`mlp_lopt_update` in plain JAX (any platform, differentiable)."""
  m_new = decays[..., :, None] * m + (1.0 - decays[..., :, None]) * g[..., None, :]  # [..., K, R]
  x = jnp.concatenate([g[..., None, :], p[..., None, :], m_new], axis=-2)  # [..., K + 2, R]
  tensors = [x[..., o:e] for o, e in zip(offsets[:-1], offsets[1:])]
  x = jnp.concatenate([v * jax.lax.rsqrt(1e-5 + jnp.mean(jnp.square(v), axis=-1, keepdims=True))
                       for v in tensors], axis=-1)
  step = _mlp_on_columns(x, c, w1, w2, b2, w3, b3, exp_mult=exp_mult, step_mult=step_mult)
  return step, m_new


def _loop_on_cpu(fn, num_weights: int):
  """``fn(*arrays)``, whose batching (``jax.vmap``) runs a loop of unbatched calls on CPU when
  any of the last ``num_weights`` arguments (the network's weights) is batched.

  Particles have their own weights, so a vmapped MLP multiplies each particle's features by its
  own weights: a batched matmul, which XLA:CPU runs several times slower for these thin shapes
  than a loop of plain ones (see ``benchmarks/README.md``). With shared weights, and on other
  platforms, the batch runs as ``jax.vmap(fn)`` over the batched arguments (the others broadcast).
  Both branches compute ``fn`` of each member: any mix of batched and unbatched arguments gives
  a Python loop's result.
  """
  @jax.custom_batching.custom_vmap
  def f(*arrays):
    return fn(*arrays)

  @f.def_vmap
  def rule(axis_size, in_batched, *arrays):
    del axis_size
    out = jax.eval_shape(fn, *[x[0] if b else x for x, b in zip(arrays, in_batched)])
    out_batched = jax.tree.map(lambda _: True, out)
    batched = [i for i, b in enumerate(in_batched) if b]

    def call(g, batch):  # g(*arrays) with the batched arguments replaced by `batch`
      args = list(arrays)
      for i, x in zip(batched, batch):
        args[i] = x
      return g(*args)

    batch = [arrays[i] for i in batched]
    vectorized = lambda *batch: jax.vmap(lambda *members: call(fn, members))(*batch)
    if not any(in_batched[-num_weights:]):
      return vectorized(*batch), out_batched
    looped = lambda *batch: jax.lax.map(lambda members: call(f, members), batch)
    return _platform_dependent(*batch, cpu=looped, default=vectorized), out_batched

  return f


_on_accelerator = threading.local()


@contextlib.contextmanager
def simulate_accelerator():
  """Within this context, programs traced on the CPU take the branches that GPU and TPU take:
  no fused kernel (:func:`available` is False) and the ``default`` branch of every platform
  choice (the plain-JAX MLP, vmapped rather than looped over particles). For tests: no GPU runs
  in CI. It acts when a function is traced, so use it around functions not yet compiled."""
  previous = getattr(_on_accelerator, "value", False)
  _on_accelerator.value = True
  try:
    yield
  finally:
    _on_accelerator.value = previous


def _simulating_accelerator() -> bool:
  return getattr(_on_accelerator, "value", False)


def _platform_dependent(*args, cpu, default):
  """``jax.lax.platform_dependent``, or ``default`` under :func:`simulate_accelerator`."""
  if _simulating_accelerator():
    return default(*args)
  return jax.lax.platform_dependent(*args, cpu=cpu, default=default)


def _op(primal, reference, num_arrays: int, static: tuple[str, ...]):
  """``op(*arrays, *static)``: ``primal(**static)(*arrays)``, with derivatives (and the primal
  under differentiation) from ``reference`` (``jax.custom_jvp``)."""
  @functools.partial(jax.custom_jvp, nondiff_argnums=tuple(range(num_arrays, num_arrays + len(static))))
  def op(*args):
    return primal(**dict(zip(static, args[num_arrays:])))(*args[:num_arrays])

  @op.defjvp
  def op_jvp(*args):
    values, (primals, tangents) = dict(zip(static, args[:len(static)])), args[len(static):]
    return jax.jvp(functools.partial(reference, **values), primals, tangents)

  return op


def _plain_op(reference, num_arrays: int, num_weights: int, static: tuple[str, ...]):
  """``reference`` in plain JAX, batched by :func:`_loop_on_cpu`."""
  return _op(lambda **values: _loop_on_cpu(functools.partial(reference, **values), num_weights),
             reference, num_arrays, static)


def _fused_op(target: str, reference, num_arrays: int, static: tuple[str, ...]):
  """The FFI target on CPU, ``reference`` elsewhere."""
  def kernel(*arrays, out_shape, **attrs):
    call = jax.ffi.ffi_call(target, out_shape, vmap_method="broadcast_all")
    ffi_attrs = {k: (np.asarray(v, np.int64) if isinstance(v, tuple) else np.float32(v))
                 for k, v in attrs.items()}
    return call(*arrays, **ffi_attrs)

  def primal(**values):
    def run(*arrays):
      out_shape = jax.eval_shape(functools.partial(reference, **values), *arrays)
      return _platform_dependent(
          *arrays, cpu=functools.partial(kernel, out_shape=out_shape, **values),
          default=functools.partial(reference, **values))
    return run

  return _op(primal, reference, num_arrays, static)


_DENSE, _LOPT = "lopt_per_parameter_mlp", "lopt_mlp_lopt_update"
_dense = _fused_op(_DENSE, per_parameter_mlp_reference, 7, ("exp_mult", "step_mult"))
_lopt = _fused_op(_LOPT, mlp_lopt_update_reference, 10, ("offsets", "exp_mult", "step_mult"))
_plain_dense = _plain_op(per_parameter_mlp_reference, 7, 6, ("exp_mult", "step_mult"))
_plain_lopt = _plain_op(mlp_lopt_update_reference, 10, 6, ("offsets", "exp_mult", "step_mult"))


def _use_kernel(num_features, w2) -> bool:
  return num_features <= 64 and max(w2.shape[-2:]) <= 256 and available()


def _weights(batch, c, w1, w2, b2, w3, b3):
  return tuple(jnp.broadcast_to(jnp.asarray(a, jnp.float32), batch + jnp.shape(a)[-k:])
               for a, k in ((c, 1), (w1, 2), (w2, 2), (b2, 1), (w3, 2), (b3, 1)))


def per_parameter_mlp(x, c, w1, w2, b2, w3, b3, *, exp_mult: float, step_mult: float):
  """The per-parameter MLP step (see the module docstring).

  Args:
    x: ``[..., R, F]`` float32 features (leading batch dims allowed, e.g. particles).
    c: ``[..., H1]`` first-layer offset (time-feature contribution plus bias).
    w1: ``[..., F, H1]``; w2: ``[..., H1, H2]``; b2: ``[..., H2]``; w3: ``[..., H2, 2]``;
    b3: ``[..., 2]``.
    exp_mult, step_mult: the step's scales.

  Returns:
    ``[..., R]`` float32 steps (subtract them from the parameters).
  """
  x = jnp.asarray(x, jnp.float32)
  weights = _weights(x.shape[:-2], c, w1, w2, b2, w3, b3)
  if not _use_kernel(x.shape[-1], weights[2]):
    return _plain_dense(x, *weights, float(exp_mult), float(step_mult))
  return _dense(x, *weights, float(exp_mult), float(step_mult))


def mlp_lopt_update(g, p, m, decays, c, w1, w2, b2, w3, b3, *, offsets: tuple[int, ...],
                    exp_mult: float, step_mult: float):
  """MLPLOpt's whole update in one kernel: momenta, per-tensor normalization, MLP.

  ``m' = d m + (1 - d) g`` for each decay ``d``; the features ``[g, p, m'_1..m'_K]`` of each row
  are scaled by ``rsqrt(1e-5 + mean(x^2))`` over the row's tensor and go through
  :func:`per_parameter_mlp`.

  Args:
    g, p: ``[..., R]`` flat gradient and parameters.
    m: ``[..., K, R]`` momenta before this step (one row per decay); decays: ``[..., K]``.
    offsets: ``S + 1`` row offsets of the tensors in the flat vectors (static).
    others: as :func:`per_parameter_mlp` (``w1: [..., K + 2, H1]``).

  Returns:
    ``(step [..., R], m' [..., K, R])``.
  """
  g = jnp.asarray(g, jnp.float32)
  batch = g.shape[:-1]
  K = m.shape[-2]
  arrays = (g, jnp.broadcast_to(p, g.shape).astype(jnp.float32),
            jnp.broadcast_to(m, batch + m.shape[-2:]).astype(jnp.float32),
            jnp.broadcast_to(jnp.asarray(decays, jnp.float32), batch + (K,)))
  arrays += _weights(batch, c, w1, w2, b2, w3, b3)
  offsets = tuple(int(o) for o in offsets)
  if not _use_kernel(K + 2, arrays[6]):
    return _plain_lopt(*arrays, offsets, float(exp_mult), float(step_mult))
  return _lopt(*arrays, offsets, float(exp_mult), float(step_mult))
