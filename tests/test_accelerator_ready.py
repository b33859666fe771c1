"""What an accelerator machine (jax, flax, optax and orbax only; a GPU/TPU backend) needs.

* The packages import without the optional ones (tyro, wandb, tensorflow-datasets, mujoco,
  gymnasium), and importing them does not import those where they are installed.
* The reference is the plain path: the fused CPU kernel off (``LOPT_META_KERNELS=0``), the
  estimators in plain JAX on the CPU; it needs no compiler. The program GPUs and TPUs run
  (simulated on the CPU by :func:`lopt_meta.kernels.simulate_accelerator`) and, where a compiler
  built it, the kernel path give its estimates to float tolerance.
* When JAX's default backend is not the CPU, no compiler is looked for, nothing is built or
  loaded, and the learned optimizers run in plain JAX (simulated: the backend query answers
  ``"gpu"`` and every way to a compiler raises), with the plain path's estimates.

The quick tier (``-m "not slow"``) compares the paths on the default learned optimizer with NRES
(``mlp-nres``); the ``slow`` cases add PES, FullES and the Adafactor-featured optimizer
(``adafac-nres``), each of which compiles programs of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

import lopt_meta
import tasks
from lopt_meta import kernels
from meta_train.estimators import NRES, PES, FullES
from tests.paths import kernel_path  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ("tyro", "wandb", "tensorflow_datasets", "tensorflow", "mujoco", "gymnasium")


def _python(code: str, *, env: dict[str, str] | None = None, timeout: float = 300) -> str:
  """Runs ``code`` in a fresh interpreter in the repository root; returns its last stdout line."""
  result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          env=dict(os.environ, **(env or {})), capture_output=True, text=True,
                          timeout=timeout)
  assert result.returncode == 0, result.stderr[-4000:]
  return result.stdout.strip().splitlines()[-1]


def test_every_module_imports_without_the_optional_packages():
  """``sys.modules[name] = None`` is what a missing package looks like to ``import`` (an
  ImportError) and to ``importlib.util.find_spec`` (None)."""
  line = _python(f"""
      import importlib, json, pkgutil, sys
      for name in {OPTIONAL!r}:
        sys.modules[name] = None
      import lopt_meta, tasks, meta_train, benchmarks
      failed = {{}}
      for package in (lopt_meta, tasks, meta_train, benchmarks):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
          try:
            importlib.import_module(info.name)
          except Exception as error:
            failed[info.name] = repr(error)
      from meta_train.command import logs
      print(json.dumps({{"failed": failed, "wandb_mode": logs.default_wandb_mode(),
                         "accelerator": "benchmarks.accelerator" in sys.modules,
                         "throughput": "benchmarks.throughput" in sys.modules}}))
      """)
  result = json.loads(line)
  assert result["failed"] == {}
  assert result["accelerator"] and result["throughput"]
  assert result["wandb_mode"] == "disabled"  # a run without wandb logs to metrics.jsonl only


def test_importing_the_packages_leaves_the_optional_packages_alone():
  line = _python(f"""
      import json, sys
      import lopt_meta, tasks, meta_train
      import meta_train.command.cli, meta_train.command.config
      import meta_train.command.run, meta_train.command.evaluation
      import benchmarks.throughput, benchmarks.accelerator
      optional = {OPTIONAL + ("matplotlib",)!r}
      print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set(optional))))
      """)
  assert json.loads(line) == []


def test_the_run_log_names_a_missing_wandb(tmp_path, monkeypatch):
  from meta_train.command import logs
  monkeypatch.setitem(sys.modules, "wandb", None)
  assert logs.default_wandb_mode() == "disabled"
  with pytest.raises(lopt_meta.ConfigError, match=r"^wandb: --wandb offline needs the wandb "
                     r"package, which is not installed"):
    logs.RunLog(tmp_path, {}, mode="offline", name="x")
  log = logs.RunLog(tmp_path, {}, mode=None, name="x")
  log.write({"step": 1, "meta_loss": 0.5})
  log.close()
  assert logs.read_metrics(tmp_path) == [{"step": 1, "meta_loss": 0.5}]


# --- The kernel off: the same estimates in plain JAX ------------------------------------------

HORIZON, WINDOW, PARTICLES, SIGMA = 8, 4, 8, 0.01
CASES = {  # name: (learned optimizer, estimator class, options)
    "mlp-nres": ("mlp", NRES, {"unroll_length": WINDOW}),
    "mlp-pes": ("mlp", PES, {"unroll_length": WINDOW}),
    "mlp-full_es": ("mlp", FullES, {}),
    "adafac-nres": ("adafac", NRES, {"unroll_length": WINDOW}),
}


def _estimate(case: str):
  """Two estimates (burn-in included for the online estimators) of a small learned-optimizer
  system on digits, built afresh (so traced afresh) under the current kernel setting."""
  lopt_name, cls, options = CASES[case]
  task = tasks.build("digits_mlp", batch_size=16, hidden_sizes=(8,))
  system = tasks.learned_optimizer_system(task, lopt_meta.get_optimizer(lopt_name),
                                          horizon=HORIZON)
  est = cls(system, num_particles=PARTICLES, sigma=SIGMA, **options)
  ws = est.init(jax.random.key(0), system.theta0)
  grads = []
  for i in (1, 2):
    grad, ws, metrics = est.estimate(jax.random.key(i), system.theta0, ws)
    grads.append(np.concatenate([np.ravel(x) for x in jax.tree.leaves(grad)]))
  return np.stack(grads), float(metrics["meta_loss"])


def _assert_same_estimates(got, want, rtol=1e-3):
  """ES estimates divide loss differences by sigma: float reassociation in the per-parameter MLP
  (about 1e-7 relative) reaches them at about 1e-5 of their scale."""
  (g, loss), (w, want_loss) = got, want
  assert np.all(np.isfinite(g))
  np.testing.assert_allclose(g, w, rtol=0, atol=rtol * np.max(np.abs(w)))
  assert loss == pytest.approx(want_loss, rel=1e-5)


class _Calls:
  """Counts, while tracing, the fused operations that take the kernel and the plain-JAX branch
  (each call of ``per_parameter_mlp`` and ``mlp_lopt_update`` asks ``_use_kernel`` once), and the
  platform choices made (``jax.lax.platform_dependent``: the kernel's and the plain path's CPU
  branches; GPU and TPU programs make none but take every ``default`` branch)."""

  def __init__(self, monkeypatch):
    self.kernel = self.plain = self.platform_choices = 0
    use_kernel, platform_dependent = kernels._use_kernel, jax.lax.platform_dependent

    def counting(*args):
      chosen = use_kernel(*args)
      if chosen:
        self.kernel += 1
      else:
        self.plain += 1
      return chosen

    def choosing(*args, **branches):
      self.platform_choices += 1
      return platform_dependent(*args, **branches)

    monkeypatch.setattr(kernels, "_use_kernel", counting)
    monkeypatch.setattr(jax.lax, "platform_dependent", choosing)


@pytest.fixture(scope="module")
def plain_estimates(request):
  """``(case, estimates)``: the estimates of case ``request.param`` with the kernel off on the CPU
  (``LOPT_META_KERNELS=0``: the plain-JAX per-parameter MLP, particles with their own weights
  looped), the reference the kernel and accelerator paths are compared with; it needs no
  compiler. Module-scoped, so computed once per case, and set up before any function-scoped
  fixture (``kernel_path``'s simulated accelerator)."""
  case = request.param
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("LOPT_META_KERNELS", "0")
    assert not kernels.available() and not kernels._simulating_accelerator()
    calls = _Calls(patch)
    estimates = _estimate(case)
  assert calls.plain > 0 and calls.kernel == 0 and calls.platform_choices > 0
  return case, estimates


QUICK_CASE = "mlp-nres"  # the default learned optimizer and estimator; the others are slow


@pytest.mark.parametrize("kernel_path", ["kernel", "accelerator"], indirect=True)
@pytest.mark.parametrize("plain_estimates", [c if c == QUICK_CASE else
                                             pytest.param(c, marks=pytest.mark.slow)
                                             for c in sorted(CASES)], indirect=True)
def test_the_kernel_and_accelerator_paths_give_the_plain_paths_estimates(plain_estimates,
                                                                         kernel_path,
                                                                         monkeypatch):
  """The fused CPU kernel (skipped without a compiler) and the GPU/TPU program (simulated on the
  CPU: no kernel, every platform choice's ``default`` branch, the MLP vmapped over particles) give
  the plain path's estimates, and each takes its own branches."""
  case, want = plain_estimates
  calls = _Calls(monkeypatch)
  got = _estimate(case)
  if kernel_path == "kernel":
    assert calls.kernel > 0 and calls.plain == 0
  else:
    assert calls.plain > 0 and calls.kernel == 0 and calls.platform_choices == 0
  _assert_same_estimates(got, want)


@pytest.mark.parametrize("plain_estimates", [QUICK_CASE], indirect=True)
def test_no_compiler_is_looked_for_when_the_backend_is_not_the_cpu(plain_estimates):
  """A fresh process whose backend query answers "gpu": importing and running the learned
  optimizers (both fused operations, and an NRES estimate) looks for no compiler, starts no
  process, loads no library, warns nothing, and gives the plain path's estimate; the MLP's step
  on constant inputs is the one worked out by hand."""
  _, want = plain_estimates
  line = _python(f"""
      import ctypes, json, shutil, subprocess, warnings
      import jax

      jax.devices()
      jax.default_backend = lambda: "gpu"

      def refuse(*args, **kwargs):
        raise AssertionError(f"a compiler or library was looked for: {{args[:1]}}")

      shutil.which = subprocess.run = subprocess.Popen = ctypes.CDLL = refuse

      import jax.numpy as jnp
      import numpy as np
      from lopt_meta import kernels
      from tests import test_accelerator_ready as t

      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not kernels.available()
        x = jnp.ones((2, 5, 8))
        step = kernels.per_parameter_mlp(x, jnp.zeros(32), jnp.full((8, 32), 0.1), jnp.eye(32),
                                         jnp.zeros(32), jnp.ones((32, 2)), jnp.zeros(2),
                                         exp_mult=1e-3, step_mult=1e-3)
        # h1 = h2 = 0.8 (8 inputs of 1 times 0.1); direction = magnitude = 32 * 0.8 = 25.6
        np.testing.assert_allclose(step, np.full((2, 5), 25.6 * np.exp(25.6e-3) * 1e-3),
                                   rtol=1e-6)
        grads, loss = t._estimate("mlp-nres")
      assert not [w for w in caught if "lopt_meta" in str(w.message)], caught
      assert kernels._load.cache_info().misses == 0  # nothing was built or loaded
      print(json.dumps({{"grads": grads.tolist(), "loss": loss}}))
      """, env={"JAX_PLATFORMS": "cpu"})
  got = json.loads(line)
  _assert_same_estimates((np.asarray(got["grads"], np.float32), got["loss"]), want)
