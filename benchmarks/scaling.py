"""Scaling over processes: fmnist8 NRES on one process with 2 devices against 2 processes with 1.

    python -m benchmarks.scaling [--num-particles 32] [--windows 5] [--rounds 2]

The workload is ``benchmarks.throughput``'s fmnist8 (MLPLOpt training ``fashion_mnist_mlp``,
W=50, horizon 1000, step-unlocked workers). Each configuration runs in fresh subprocesses on
this machine's CPU:

* ``1p x 1d``: one process, one device, half the particles (the per-device share);
* ``1p x 2d``: one process, two devices (``--xla_force_host_platform_device_count=2``), the
  pairs sharded over them, the estimate summed by an in-process all-reduce;
* ``2p x 1d``: two processes joined by ``jax.distributed`` on 127.0.0.1 (gloo collectives),
  one device each, the same total particles: the estimate's all-reduce crosses processes.

A window is one estimate (``W`` steps of every particle and the all-reduce of the gradient),
timed after compilation (median of ``--windows``); trajectory-steps/s counts every particle's
steps. ``2p/1p`` is the rate ratio at the same total particles (the cost of going through
processes: the gloo all-reduce per outer step, and two runtimes on the same cores);
``weak`` is the window time of ``1p x 1d`` at half the particles over that of ``2p x 1d`` at
all of them (1.0: the time per outer step stays flat as processes and particles grow together;
on a machine with fewer cores than processes x XLA threads it cannot). Configurations are run in
``--rounds`` alternating rounds and the best round of each is reported. The last stdout line is
JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks.common import emit_json, print_table
from tests import processes as local_processes

TASK, W, HORIZON = "fashion_mnist_mlp", 50, 1000

WORKER = """
import json, sys, time
from meta_train.command import distributed
address, pid, n, windows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if address != "-":
    distributed.initialize(distributed.Distributed(coordinator_address=address, num_processes=2,
                                                   process_id=pid))
import jax, numpy as np, lopt_meta, tasks
from meta_train.estimators import NRES
system = tasks.learned_optimizer_system(tasks.build(%(task)r), lopt_meta.MLPLOpt(),
                                        horizon=%(horizon)d)
est = NRES(system, num_particles=n, sigma=0.01, unroll_length=%(W)d)
theta = system.theta0
ws = est.init(jax.random.key(0), theta)
t0 = time.perf_counter()
g, ws, _ = est.estimate(jax.random.key(1), theta, ws)
jax.block_until_ready((g, ws))
compile_s = time.perf_counter() - t0
times = []
for i in range(windows):
    t0 = time.perf_counter()
    g, ws, _ = est.estimate(jax.random.key(2 + i), theta, ws)
    jax.block_until_ready((g, ws))
    times.append(time.perf_counter() - t0)
print(json.dumps({"window_s": float(np.median(times)), "compile_s": compile_s,
                  "devices": jax.device_count(), "processes": jax.process_count()}), flush=True)
""" % {"task": TASK, "horizon": HORIZON, "W": W}


def run_config(processes: int, devices: int, particles: int, windows: int,
               timeout_s: float) -> dict:
  """One configuration in fresh subprocesses; returns process 0's measurement."""
  address = f"127.0.0.1:{local_processes.free_local_port()}" if processes > 1 else "-"
  procs = [subprocess.Popen([sys.executable, "-c", WORKER, address, str(i), str(particles),
                             str(windows)], env=local_processes.local_cpu_env(devices),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(processes)]
  try:
    outs = [p.communicate(timeout=timeout_s) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, (out, err) in zip(procs, outs):
    if p.returncode != 0:
      raise RuntimeError(f"{processes}p x {devices}d failed ({p.returncode}): {err[-2000:]}")
  result = json.loads(outs[0][0].strip().splitlines()[-1])
  assert result["devices"] == processes * devices and result["processes"] == processes
  return {"config": f"{processes}p x {devices}d", "processes": processes,
          "devices_per_process": devices, "particles": particles,
          "window_ms": result["window_s"] * 1e3,
          "traj_steps_per_s": particles * W / result["window_s"],
          "compile_s": result["compile_s"]}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num-particles", type=int, default=32,
                      help="total particles (a multiple of 4)")
  parser.add_argument("--windows", type=int, default=5, help="timed windows per configuration")
  parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of all configs")
  parser.add_argument("--timeout-s", type=float, default=600)
  args = parser.parse_args(argv)
  n = args.num_particles
  if n % 4:
    parser.error("--num-particles must be a multiple of 4 (pairs split over 2 devices)")
  configs = [(1, 1, n // 2), (1, 2, n), (2, 1, n)]
  best: dict[str, dict] = {}
  start = time.perf_counter()
  for _ in range(args.rounds):
    for processes, devices, particles in configs:
      row = run_config(processes, devices, particles, args.windows, args.timeout_s)
      if row["config"] not in best or row["window_ms"] < best[row["config"]]["window_ms"]:
        best[row["config"]] = row
  rows = [best[f"{p}p x {d}d"] for p, d, _ in configs]
  print(f"fmnist8 NRES ({TASK}, MLPLOpt, W={W}) on {os.cpu_count()} CPU cores; best of "
        f"{args.rounds} rounds, median of {args.windows} windows each")
  print_table(rows, ["config", "particles", "window_ms", "traj_steps_per_s", "compile_s"])
  one, two, half = best["1p x 2d"], best["2p x 1d"], best["1p x 1d"]
  ratio = two["traj_steps_per_s"] / one["traj_steps_per_s"]
  weak = half["window_ms"] / two["window_ms"]
  print(f"2 processes x 1 device / 1 process x 2 devices at {n} particles: {ratio:.3f}x "
        f"trajectory-steps/s; weak scaling (1p x 1d at {n // 2} over 2p x 1d at {n}): {weak:.3f}")
  emit_json({"benchmark": "scaling", "config": "fmnist8", "estimator": "nres",
             "num_particles": n, "unroll_length": W, "rows": rows,
             "ratio_2p_over_1p": ratio, "weak_scaling": weak, "cpu_cores": os.cpu_count(),
             "wall_s": time.perf_counter() - start})


if __name__ == "__main__":
  main()
