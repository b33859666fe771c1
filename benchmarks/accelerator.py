"""Accelerator check: estimates against the CPU, then throughput and memory at 16..4096 particles.

    python -m benchmarks.accelerator --data-dir DIR   # on a GPU/TPU: within 7 minutes (--budget-s)
    python -m benchmarks.accelerator --quick          # a short run: about 3 minutes on 2 CPU cores

Runs on whatever backend JAX finds (its default device), from a source checkout with jax, flax,
optax, orbax-checkpoint, numpy and scikit-learn installed.

1. Check: NRES, PES and FullES on two small systems (``toy2d``, and MLPLOpt training a 64-8-10
   MLP on scikit-learn's digits), two estimates each (after the online estimators' burn-in), on
   the default device and on the CPU in the same process, from the same keys; the CPU run takes
   plain XLA (the fused CPU kernel off), so on a CPU-only machine the check compares the kernel
   path with plain XLA. Matmuls run at full float32 precision
   (``jax.default_matmul_precision("highest")``); a row passes when the largest difference is at
   most ``--rtol`` (1e-3) of the largest estimate entry. Off the CPU, one more row (``default``
   precision, not judged) shows what the backend's default matmul precision (TF32 on recent
   NVIDIA GPUs) does to the MLPLOpt estimate.
2. Throughput: MLPLOpt meta-training with NRES on ``fashion_mnist_mlp`` (fmnist8: 8x8 images,
   W=50) and ``fashion_mnist_mlp28`` (fmnist28: 28x28, W=20), horizon 1000, at 16, 64, 256,
   1024 and 4096 particles on one device. The workers start in lockstep (no burn-in; a window is
   the same program either way). A trajectory-step is one inner training step of one particle;
   the figure is the median over timed windows after compilation. Memory: the window program's
   own peak (XLA's memory analysis) and the device's ``peak_bytes_in_use`` so far in the process
   (``n/a`` where the device does not report it, e.g. the CPU). Sizes run in increasing order,
   both configurations at each size; a size is skipped when it would end after ``--budget-s``
   (the whole script's time, from its start) or its window would take over ``--max-window-s``.
3. A table of each part, then one JSON line (the last stdout line). Exit status 1 if a check
   row fails.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import time

import jax
import numpy as np

import lopt_meta
import tasks
from benchmarks.common import emit_json, print_table
from lopt_meta import kernels
from meta_train.estimators import NRES, PES, FullES

ESTIMATORS = {"nres": NRES, "pes": PES, "full_es": FullES}
THROUGHPUT_CONFIGS = {  # name: (inner task, unroll length W)
    "fmnist8": ("fashion_mnist_mlp", 50),
    "fmnist28": ("fashion_mnist_mlp28", 20),
}
SIZES = (16, 64, 256, 1024, 4096)
QUICK_SIZES = (16, 64)


# ---------------------------------------------------------------------------------------------
# 1. Check against the CPU
# ---------------------------------------------------------------------------------------------

def check_systems() -> dict[str, tuple[tasks.UnrolledSystem, dict]]:
  """The small systems of the check, with their estimator settings."""
  digits = tasks.build("digits_mlp", batch_size=16, hidden_sizes=(8,))
  return {
      "toy2d": (tasks.get("toy2d"),
                {"num_particles": 16, "sigma": 0.1, "unroll_length": 10}),
      "digits_mlp/mlp": (tasks.learned_optimizer_system(digits, lopt_meta.MLPLOpt(), horizon=20),
                         {"num_particles": 16, "sigma": 0.01, "unroll_length": 5}),
  }


def _config_context(name: str, value):
  """``jax.<name>(value)`` (a configuration context manager), or no context where this JAX has
  none of that name."""
  context = getattr(jax, name, None)
  return context(value) if context is not None else contextlib.nullcontext()


@contextlib.contextmanager
def _on(device: jax.Device, *, kernels_off: bool):
  """Arrays made without a device go to ``device``; ``kernels_off`` switches the fused CPU
  kernel off for programs traced inside."""
  previous = os.environ.get("LOPT_META_KERNELS")
  if kernels_off:
    os.environ["LOPT_META_KERNELS"] = "0"
  try:
    with _config_context("default_device", device):
      yield
  finally:
    if previous is None:
      os.environ.pop("LOPT_META_KERNELS", None)
    else:
      os.environ["LOPT_META_KERNELS"] = previous


def estimates_on(device: jax.Device, system: tasks.UnrolledSystem, estimator: str,
                 settings: dict, *, kernels_off: bool = False, windows: int = 2) -> np.ndarray:
  """``windows`` estimates (flattened, ``[windows, dim]``) of a fresh estimator with every input
  (theta, data, keys) on ``device``, so that its programs run there."""
  with _on(device, kernels_off=kernels_off):
    put = lambda tree: jax.device_put(tree, device)
    system = dataclasses.replace(system, data=put(system.data))
    options = dict(settings)
    if estimator == "full_es":
      options.pop("unroll_length")
    est = ESTIMATORS[estimator](system, devices=[device], **options)
    theta = put(system.theta0)
    ws = est.init(put(jax.random.key(0)), theta)
    out = []
    for i in range(windows):
      grad, ws, _ = est.estimate(put(jax.random.key(1 + i)), theta, ws)
      out.append(np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(grad)]))
  return np.stack(out)


def compare(got: np.ndarray, want: np.ndarray) -> dict:
  max_abs = float(np.max(np.abs(got - want)))
  scale = float(np.max(np.abs(want)))
  return {"max_abs_diff": max_abs, "scale": scale,
          "rel_diff": max_abs / scale if scale > 0 else float("inf" if max_abs else 0.0),
          "finite": bool(np.all(np.isfinite(got)) and np.all(np.isfinite(want)))}


def run_check(rtol: float) -> list[dict]:
  """One row per system and estimator (full float32 matmuls, judged against ``rtol``), and one
  unjudged row for MLPLOpt + NRES at the backend's default matmul precision. A row whose run
  raises fails, with the error in its note. (On a CPU the two precisions are the same: no
  unjudged row.)"""
  device = jax.devices()[0]
  try:
    cpu = jax.devices("cpu")[0]
  except RuntimeError as error:  # e.g. JAX_PLATFORMS=cuda: the CPU backend was not started
    return [{"system": "-", "estimator": "-", "precision": "-", "pass": False,
             "note": f"no CPU backend to compare with ({error}); include cpu in JAX_PLATFORMS"}]
  systems = check_systems()
  cases = [(name, estimator, "highest") for name in systems for estimator in ESTIMATORS]
  if device.platform != "cpu":
    cases.append(("digits_mlp/mlp", "nres", "default"))
  references = {}  # (system, estimator): the CPU's estimates
  rows = []
  for name, estimator, precision in cases:
    system, settings = systems[name]
    row = {"system": name, "estimator": estimator, "precision": precision}
    start = time.perf_counter()
    try:
      with _config_context("default_matmul_precision",
                           "highest" if precision == "highest" else None):
        got = estimates_on(device, system, estimator, settings)
      if (name, estimator) not in references:
        with _config_context("default_matmul_precision", "highest"):
          references[name, estimator] = estimates_on(cpu, system, estimator, settings,
                                                     kernels_off=True)
      row.update(compare(got, references[name, estimator]))
      row["pass"] = (row["finite"] and row["rel_diff"] <= rtol) if precision == "highest" else None
    except Exception as error:  # noqa: BLE001 - reported in the table, the run goes on
      row.update(**{"pass": False, "note": _error_note(error)})
    row["seconds"] = time.perf_counter() - start
    rows.append(row)
    verdict = {True: "PASS", False: "FAIL", None: "not judged"}[row["pass"]]
    print(f"  check {name} {estimator} ({precision} precision): rel diff "
          f"{row.get('rel_diff', float('nan')):.2e}, {verdict} ({row['seconds']:.1f} s)"
          + (f" {row['note']}" if "note" in row else ""), flush=True)
  return rows


# ---------------------------------------------------------------------------------------------
# 2. Throughput and memory
# ---------------------------------------------------------------------------------------------

def _mb(value) -> float | None:
  return None if value is None else value / 2 ** 20


def device_peak_bytes(device: jax.Device) -> int | None:
  """The device's ``peak_bytes_in_use`` since the process started, or None if not reported."""
  try:
    stats = device.memory_stats()
  except Exception:  # some backends do not implement it
    return None
  return None if not stats else stats.get("peak_bytes_in_use")


def program_peak_bytes(compiled) -> int | None:
  """A compiled program's own device memory (XLA's analysis), or None if not reported."""
  try:
    m = compiled.memory_analysis()
  except Exception:
    return None
  if m is None:
    return None
  peak = getattr(m, "peak_memory_in_bytes", 0)
  if peak:
    return int(peak)
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def build_system(config: str, data_dir: str | None) -> tuple[tasks.UnrolledSystem, int]:
  task_name, W = THROUGHPUT_CONFIGS[config]
  task = tasks.build(task_name, data_dir=data_dir)
  return tasks.learned_optimizer_system(task, lopt_meta.MLPLOpt(), horizon=1000), W


def measure(system: tasks.UnrolledSystem, W: int, N: int, device: jax.Device, *,
            windows: int, max_window_s: float) -> dict:
  """Compiles one NRES window of ``N`` particles, then times up to ``windows`` of them (fewer
  when a window is slow: at most about ``3 * max_window_s`` of timed windows)."""
  est = NRES(system, num_particles=N, sigma=0.01, unroll_length=W, lockstep=True,
             devices=[device])
  theta = system.theta0
  start = time.perf_counter()
  ws = jax.block_until_ready(est.init(jax.random.key(0), theta))
  estimate = jax.jit(est.estimate_fn).lower(jax.random.key(1), theta, ws, system.data).compile()
  compile_s = time.perf_counter() - start
  times = []
  for i in range(windows):
    t0 = time.perf_counter()
    _, ws, metrics = estimate(jax.random.key(2 + i), theta, ws, system.data)
    jax.block_until_ready(ws)
    times.append(time.perf_counter() - t0)
    if i >= 1 and sum(times) > 3 * max_window_s:
      break
  timed = times[1:] if len(times) > 1 else times  # the first call also warms up
  window_s = float(np.median(timed))
  return {"traj_steps_per_s": N * W / window_s, "window_ms": window_s * 1e3,
          "compile_s": compile_s, "windows_timed": len(timed),
          "program_mb": _mb(program_peak_bytes(estimate)) or "n/a",
          "device_peak_mb": _mb(device_peak_bytes(device)) or "n/a",
          "meta_loss": float(metrics["meta_loss"])}


def _error_note(error: Exception) -> str:
  lines = str(error).strip().splitlines()
  return f"error: {type(error).__name__}: {lines[0][:160] if lines else ''}"


def _out_of_memory(error: Exception) -> bool:
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def run_throughput(sizes, *, data_dir: str | None, windows: int, deadline: float,
                   max_window_s: float) -> list[dict]:
  """One row per configuration and size (the first size of each always runs; a later one only
  when its predicted compile and windows end before ``deadline``, a ``time.perf_counter()``)."""
  device = jax.devices()[0]
  systems = {config: build_system(config, data_dir) for config in THROUGHPUT_CONFIGS}
  last: dict[str, dict] = {}  # the previous size's row, per configuration
  stopped: dict[str, str] = {}
  rows = []
  for N in sizes:
    for config, (system, W) in systems.items():
      row = {"config": config, "num_particles": N, "unroll_length": W}
      prev = last.get(config)
      if config in stopped:
        row["note"] = stopped[config]
      elif prev is not None:
        growth = N / prev["num_particles"]
        next_window = prev["window_ms"] / 1e3 * growth
        # compile time barely grows with N; windows grow at most linearly
        needed = prev["compile_s"] * 1.5 + next_window * min(windows, 4)
        if next_window > max_window_s:
          stopped[config] = row["note"] = f"skipped: a window would take ~{next_window:.0f} s"
        elif time.perf_counter() + needed > deadline:
          stopped[config] = row["note"] = f"skipped: needs ~{needed:.0f} s, past --budget-s"
      if "note" not in row:
        try:
          row.update(measure(system, W, N, device, windows=windows, max_window_s=max_window_s))
          last[config] = row
        except Exception as error:  # noqa: BLE001 - reported in the table, the run goes on
          stopped[config] = row["note"] = ("out of memory" if _out_of_memory(error)
                                           else _error_note(error))
      rows.append(row)
      if "note" in row:
        print(f"  {config} N={N}: {row['note']}", flush=True)
      else:
        print(f"  {config} N={N}: {row['traj_steps_per_s']:.0f} trajectory-steps/s "
              f"(window {row['window_ms']:.1f} ms, compile {row['compile_s']:.1f} s)", flush=True)
  return rows


# ---------------------------------------------------------------------------------------------

def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-dir", default=None,
                      help="folder of FashionMNIST's IDX files (default: the usual places, see "
                           "tasks.data)")
  parser.add_argument("--quick", action="store_true",
                      help=f"particles {', '.join(map(str, QUICK_SIZES))} only, fewer windows, "
                           "a budget of 170 s")
  parser.add_argument("--sizes", type=int, nargs="+", default=None,
                      help=f"particle counts (default {' '.join(map(str, SIZES))})")
  parser.add_argument("--windows", type=int, default=None,
                      help="timed windows per size after compilation (default 6; quick 3)")
  parser.add_argument("--budget-s", type=float, default=None,
                      help="the whole script's time: later sizes are skipped to end within it "
                           "(default 420 s; quick 170 s)")
  parser.add_argument("--max-window-s", type=float, default=10.0,
                      help="skip sizes whose window would take longer than this")
  parser.add_argument("--rtol", type=float, default=1e-3,
                      help="check tolerance, relative to the largest estimate entry")
  parser.add_argument("--skip-check", action="store_true")
  parser.add_argument("--skip-throughput", action="store_true")
  args = parser.parse_args(argv)
  sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
  windows = args.windows or (3 if args.quick else 6)
  budget_s = args.budget_s if args.budget_s is not None else (170.0 if args.quick else 420.0)

  start = time.perf_counter()
  device = jax.devices()[0]
  print(f"JAX {jax.__version__}, backend {jax.default_backend()}, device {device} "
        f"({len(jax.devices())} device(s)); fused CPU kernel in use: {kernels.available()}",
        flush=True)
  check_rows, throughput_rows = [], []
  if not args.skip_check:
    print("1. Estimates on the default device against the CPU (plain XLA):", flush=True)
    check_rows = run_check(args.rtol)
  if not args.skip_throughput:
    print("2. Throughput, MLPLOpt + NRES, horizon 1000:", flush=True)
    throughput_rows = run_throughput(sizes, data_dir=args.data_dir, windows=windows,
                                     deadline=start + budget_s, max_window_s=args.max_window_s)
  elapsed = time.perf_counter() - start

  if check_rows:
    kernel = " (fused kernel)" if kernels.available() else ""
    print(f"\nCheck: {device.platform}{kernel} against cpu (plain XLA), two estimates each "
          f"(pass: max |diff| <= {args.rtol:g} x max |estimate|)")
    print_table(check_rows, ["system", "estimator", "precision", "max_abs_diff", "scale",
                             "rel_diff", "pass", "note"])
  if throughput_rows:
    print(f"\nThroughput on {device} (trajectory-steps/s; program_mb: the window program's "
          "peak; device_peak_mb: the device's peak so far)")
    print_table(throughput_rows, ["config", "num_particles", "unroll_length", "traj_steps_per_s",
                                  "window_ms", "compile_s", "program_mb", "device_peak_mb",
                                  "note"])
  passed = all(r["pass"] for r in check_rows if r["pass"] is not None)
  emit_json({"benchmark": "accelerator", "jax": jax.__version__,
             "backend": jax.default_backend(), "device": str(device),
             "device_kind": getattr(device, "device_kind", None),
             "fused_cpu_kernel": kernels.available(), "check_passed": passed,
             "check": check_rows, "throughput": throughput_rows, "elapsed_s": elapsed})
  return 0 if passed else 1


if __name__ == "__main__":
  raise SystemExit(main())
