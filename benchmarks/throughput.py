"""Meta-training throughput of MLPLOpt: trajectory-steps per second, memory, and the roofline.

    python -m benchmarks.throughput --config fmnist28 --estimator nres [--json]
    python -m benchmarks.throughput --config fmnist8 --estimator pes --num-particles 256

Configs: ``fmnist28`` is MLPLOpt on ``fashion_mnist_mlp28`` with 16 particles and W=20;
``fmnist8`` is MLPLOpt on ``fashion_mnist_mlp`` with 32 particles and W=50 (horizon 1000,
step-unlocked workers, training-loss meta-loss). A trajectory-step is one inner training step of
one particle (both particles of a pair count). Timed after compilation: the median of several
windows in one process.

Roofline: FLOPs per trajectory-step are the inner network's forward and backward passes (3x the
forward matmuls) plus the per-parameter MLP (19 -> 32 -> 32 -> 2 on every parameter, counted in
full), divided into the rate of a large float32 matmul measured in this process. The last stdout
line is JSON with ``traj_steps_per_s``, ``peak_rss_mb``, ``config``, ``estimator`` and the roofline.
"""

from __future__ import annotations

import argparse
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

import lopt_meta
import tasks
from benchmarks.common import emit_json
from lopt_meta import kernels
from meta_train.estimators import NRES, PES

CONFIGS = {
    "fmnist28": ("fashion_mnist_mlp28", 16, 20),
    "fmnist8": ("fashion_mnist_mlp", 32, 50),
}
ESTIMATORS = {"nres": NRES, "pes": PES}


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
  """The rate of an ``n x n`` float32 matmul (best of ``reps``), in GFLOP/s."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  best = min(_time(lambda: f(a)) for _ in range(reps))
  return 2 * n ** 3 / best / 1e9


def _time(fn) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0


def flops_per_trajectory_step(task: tasks.InnerTask, lopt: lopt_meta.MLPLOpt) -> dict[str, float]:
  """The issue's FLOP count: 3 x the inner forward matmuls, plus the per-parameter MLP."""
  params = task.init_params(jax.random.key(0))
  kernels_ = [x for path, x in jax.tree_util.tree_leaves_with_path(params)
              if "kernel" in jax.tree_util.keystr(path) and x.ndim == 2]
  forward = 2 * task.batch_size * sum(k.shape[0] * k.shape[1] for k in kernels_)
  n = sum(x.size for x in jax.tree.leaves(params))
  sizes = (lopt.num_features + 11,) + lopt.hidden_sizes + (2,)
  mlp = 2 * n * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
  return {"inner_forward_backward": 3 * forward, "per_parameter_mlp": mlp,
          "total": 3 * forward + mlp, "num_params": n}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", choices=sorted(CONFIGS), default="fmnist28")
  parser.add_argument("--estimator", choices=sorted(ESTIMATORS), default="nres")
  parser.add_argument("--num-particles", type=int, default=None)
  parser.add_argument("--windows", type=int, default=5, help="timed windows (after compile)")
  parser.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
  args = parser.parse_args(argv)
  task_name, N, W = CONFIGS[args.config]
  N = args.num_particles or N

  task = tasks.build(task_name)
  lopt = lopt_meta.MLPLOpt()
  system = tasks.learned_optimizer_system(task, lopt, horizon=1000)
  est = ESTIMATORS[args.estimator](system, num_particles=N, sigma=0.01, unroll_length=W)
  theta = system.theta0
  ws = est.init(jax.random.key(0), theta)
  start = time.perf_counter()
  _, ws, _ = est.estimate(jax.random.key(1), theta, ws)
  jax.block_until_ready(ws)
  compile_s = time.perf_counter() - start
  times = []
  for i in range(args.windows):
    start = time.perf_counter()
    _, ws, metrics = est.estimate(jax.random.key(2 + i), theta, ws)
    jax.block_until_ready(ws)
    times.append(time.perf_counter() - start)
  window_s = float(np.median(times))
  steps_per_s = N * W / window_s
  peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

  flops = flops_per_trajectory_step(task, lopt)
  gflops = matmul_gflops()
  roofline = gflops * 1e9 / flops["total"]
  record = {
      "benchmark": "throughput", "config": args.config, "estimator": args.estimator,
      "task": task_name, "num_particles": N, "unroll_length": W,
      "traj_steps_per_s": steps_per_s, "window_s": window_s, "compile_s": compile_s,
      "peak_rss_mb": peak_rss_mb, "mflop_per_traj_step": flops["total"] / 1e6,
      "mflop_inner": flops["inner_forward_backward"] / 1e6,
      "mflop_per_parameter_mlp": flops["per_parameter_mlp"] / 1e6,
      "matmul_gflops": gflops, "roofline_traj_steps_per_s": roofline,
      "fraction_of_roofline": steps_per_s / roofline, "fused_cpu_kernel": kernels.available(),
      "kernel_isa": kernels.isa() if kernels.available() else None,
      "device": str(jax.devices()[0]), "meta_loss": float(metrics["meta_loss"]),
  }
  print(f"MLPLOpt on {task_name}: {N} particles, W={W}, {args.estimator.upper()}")
  print(f"  throughput     {steps_per_s:10.0f} trajectory-steps/s  ({window_s * 1e3:.1f} ms per "
        f"window; compile {compile_s:.1f} s)")
  print(f"  FLOPs          {flops['total'] / 1e6:10.1f} MFLOP per trajectory-step "
        f"(inner {flops['inner_forward_backward'] / 1e6:.1f} + per-parameter MLP "
        f"{flops['per_parameter_mlp'] / 1e6:.1f}; {flops['num_params']} parameters)")
  print(f"  f32 matmul     {gflops:10.1f} GFLOP/s  ->  roofline {roofline:.0f} trajectory-steps/s")
  print(f"  fraction       {steps_per_s / roofline:10.3f} of the roofline")
  print(f"  peak RSS       {peak_rss_mb:10.0f} MB")
  emit_json(record)


if __name__ == "__main__":
  main()
