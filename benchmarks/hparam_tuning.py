"""Hyperparameter optimization: the ES-Single paper's section 4.2 experiments, at equal compute.

    python -m benchmarks.hparam_tuning --part schedule
    python -m benchmarks.hparam_tuning --part many --seeds 4

**schedule** (Figure 7): ``lr_decay_schedule`` (FashionMNIST 2x100 MLP, SGD with momentum 0.9,
``alpha_t = theta_0 / (1 + t/Q)^theta_1``, ``Q = T``), sigma 0.1, outer Adam 1e-2, lockstep,
W = 10. NRES and PES run ``--outer-steps`` updates of N W inner steps; FullES gets the same
compute (its updates cost N T). A grid over the two hyperparameters (the declared ranges: log10
lr in (-3, -0.5), log10 decay in (-2, 2)) gives the landscape; the PNG draws it with each run's
theta trajectory. The table compares each run's final theta with the grid's optimum, both
measured by the same function (the mean training loss over the same ``--grid-episodes`` runs).
``--meta-loss telescoping`` (Figure 8) targets the final loss on each run's fixed batch of 1000
training examples instead, and the table reports that final loss.

**many** (Figure 9): ``many_hparams`` (29 hyperparameters), sigma 0.3, N = 10, outer Adam 1e-2,
T = 1000, W = 10, lockstep, one run per seed with the starting hyperparameters drawn from the
paper's ranges with that seed; random search at the same compute (trials of one full run). The
table prints the best meta-objective (the mean validation loss over a run) so far at equal
compute, mean and min/max over seeds; the PNG draws it against compute.

Compute is inner steps times particles (or trials), burn-in included; evaluations are not counted.
Runs go to ``--out`` (default ``benchmarks/out/hparam_tuning``) as ordinary run folders, so
``meta-train plot`` draws them too. The paper's settings are larger (schedule: T = 5000, N = 1000);
``--horizon`` and ``--num-particles`` scale them, and the JSON line records what ran. The final
line is one JSON object.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks.common import emit_json, print_table
from meta_train.command import build as build_lib
from meta_train.command import config as config_lib
from meta_train.command import hpo_plots
from tasks.hpo import search
from meta_train.command import run as run_lib
from meta_train.command.logs import read_metrics


def _config(task: str, estimator: str, *, seed: int, num_particles: int, sigma: float,
            unroll_length: int, outer_steps: int, horizon: int, eval_every: int,
            eval_episodes: int, out: Path, options: dict[str, str]) -> config_lib.TrainConfig:
  return config_lib.TrainConfig.from_dict({
      "task": task, "task_option": options, "horizon": horizon, "estimator": estimator,
      "num_particles": num_particles, "sigma": sigma, "unroll_length": unroll_length,
      "lockstep": True, "outer_steps": outer_steps, "outer_lr": 1e-2, "outer_optimizer": "adam",
      "seed": seed, "out": str(out), "log_every": max(1, min(10, outer_steps)),
      "eval_every": eval_every, "eval_episodes": eval_episodes,
      "checkpoint_every": outer_steps, "wandb": "disabled"})


def _train(config: config_lib.TrainConfig) -> tuple[Path, float, int]:
  """Runs ``config`` in a fresh folder; returns the folder, seconds and total inner steps."""
  out = config.run_dir()
  start = time.perf_counter()
  run_lib.train(config, overwrite=True)
  seconds = time.perf_counter() - start
  compute = max(r.get("total_unroll_steps", 0) for r in read_metrics(out))
  return out, seconds, compute


def _runs(args, task: str, sigma: float, num_particles: int, options: dict[str, str], seed: int,
          root: Path) -> dict[str, tuple[Path, float, int]]:
  """NRES and PES with ``--outer-steps`` updates, FullES with the same compute."""
  per_update = num_particles * args.unroll_length
  full_updates = max(1, args.outer_steps * per_update // (num_particles * args.horizon))
  runs = {}
  for estimator, W, steps in (("nres", args.unroll_length, args.outer_steps),
                              ("pes", args.unroll_length, args.outer_steps),
                              ("full_es", args.horizon, full_updates)):
    eval_every = args.eval_every if estimator != "full_es" else 1
    config = _config(task, estimator, seed=seed, num_particles=num_particles, sigma=sigma,
                     unroll_length=W, outer_steps=steps, horizon=args.horizon,
                     eval_every=eval_every, eval_episodes=args.eval_episodes,
                     out=root / f"{estimator}-seed{seed}", options=options)
    runs[estimator] = _train(config)
    print(f"  {estimator} seed {seed}: {steps} updates, {runs[estimator][2]} inner steps, "
          f"{runs[estimator][1]:.0f} s", flush=True)
  return runs


def schedule(args) -> dict:
  telescoping = args.meta_loss == "telescoping"
  root = Path(args.out) / ("schedule-telescoping" if telescoping else "schedule")
  options = {"dataset": args.dataset, "meta_loss": args.meta_loss}
  scale = args.horizon if telescoping else 1  # the telescoping objective is l_T / T
  sigma, N = 0.1, args.num_particles or 20
  runs = _runs(args, "lr_decay_schedule", sigma, N, options, 0, root)
  system = build_lib.build_system(_config(
      "lr_decay_schedule", "nres", seed=0, num_particles=N, sigma=sigma,
      unroll_length=args.unroll_length, outer_steps=1, horizon=args.horizon, eval_every=0,
      eval_episodes=1, out=root / "unused", options=options))
  key = jax.random.key(1234)
  start = time.perf_counter()
  grid = search.grid_search(system, points={"lr": args.grid, "decay": args.grid}, key=key,
                            episodes=args.grid_episodes)
  grid_s = time.perf_counter() - start
  search.write_grid(grid, root / "grid.npz")
  measure = jax.jit(lambda theta, data: system.bind(data).mean_loss(
      theta, key, num_episodes=args.grid_episodes))
  rows = []
  best = float(np.nanmin(grid.objective)) * scale
  for estimator, (run_dir, seconds, compute) in runs.items():
    theta = run_lib.load_run(run_dir).theta
    final = float(measure(theta, system.data)) * scale
    rows.append({"method": estimator, "compute": compute, "final_objective": final,
                 "grid_optimum": best, "gap": final - best, "log10_lr": float(theta["lr"]) / np.log(10),
                 "log10_decay": float(theta["decay"]) / np.log(10), "seconds": seconds})
  g = grid.best_theta
  rows.append({"method": f"grid {args.grid}x{args.grid}", "compute": grid.compute,
               "final_objective": best, "grid_optimum": best, "gap": 0.0,
               "log10_lr": g["lr"] / np.log(10), "log10_decay": g["decay"] / np.log(10),
               "seconds": grid_s})
  png = hpo_plots.plot_hpo([runs[e][0] for e in runs], root / "schedule.png",
                           landscape=root / "grid.npz")
  objective = ("final training loss on the run's fixed batch of 1000 (telescoping)"
               if telescoping else "mean training loss over a run")
  print(f"\nlr_decay_schedule: T={args.horizon} (paper 5000), N={N} (paper 1000), W="
        f"{args.unroll_length}, sigma {sigma}, Adam 1e-2, lockstep; objective: {objective}, "
        f"mean of {args.grid_episodes} fixed runs")
  print_table(rows, ["method", "compute", "final_objective", "grid_optimum", "gap", "log10_lr",
                     "log10_decay", "seconds"])
  print(f"figure: {png}")
  return {"part": "schedule", "meta_loss": args.meta_loss, "horizon": args.horizon, "num_particles": N,
          "unroll_length": args.unroll_length, "outer_steps": args.outer_steps, "rows": rows,
          "png": str(png)}


def many(args) -> dict:
  root = Path(args.out) / "many"
  sigma, N = 0.3, args.num_particles or 10
  options = {"dataset": args.dataset}
  run_dirs, computes, seconds = {}, {}, {}
  for seed in range(args.seeds):
    options_seed = {**options, "init_seed": str(seed)}
    for estimator, (run_dir, s, compute) in _runs(args, "many_hparams", sigma, N, options_seed,
                                                  seed, root).items():
      run_dirs.setdefault(estimator, []).append(run_dir)
      computes.setdefault(estimator, []).append(compute)
      seconds.setdefault(estimator, []).append(s)
  budget = max(computes["nres"])
  system = build_lib.build_system(_config(
      "many_hparams", "nres", seed=0, num_particles=N, sigma=sigma,
      unroll_length=args.unroll_length, outer_steps=1, horizon=args.horizon, eval_every=0,
      eval_episodes=1, out=root / "unused", options=options))
  for seed in range(args.seeds):
    start = time.perf_counter()
    result = search.random_search(system, budget=budget, key=jax.random.key(seed))
    out = root / f"random-seed{seed}"
    if out.exists():
      shutil.rmtree(out)
    search.write_random(result, out, task="many_hparams", budget=budget, seed=seed)
    run_dirs.setdefault("random", []).append(out)
    computes.setdefault("random", []).append(int(result.compute[-1]))
    seconds.setdefault("random", []).append(time.perf_counter() - start)
    print(f"  random seed {seed}: {len(result.objective)} trials, best "
          f"{result.best_so_far[-1]:.4f}", flush=True)
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(8, 5.5))
  summary = hpo_plots.draw_best_so_far(ax, [d for dirs in run_dirs.values() for d in dirs])
  ax.set_title(f"many_hparams (29 hyperparameters), {args.seeds} seeds: mean, min..max")
  fig.tight_layout()
  png = root / "many_hparams.png"
  fig.savefig(png, dpi=100)
  plt.close(fig)
  rows = []
  at = min(s["compute"] for s in summary.values())  # equal compute for every method
  for method, dirs in run_dirs.items():
    values = []
    for d in dirs:
      x, best = hpo_plots.best_so_far(d)
      values.append(best[np.searchsorted(x, at, side="right") - 1])
    rows.append({"method": method, "compute": int(at), "best_mean": float(np.mean(values)),
                 "best_min": float(np.min(values)), "best_max": float(np.max(values)),
                 "seconds_per_seed": float(np.mean(seconds[method]))})
  print(f"\nmany_hparams: T={args.horizon}, N={N}, W={args.unroll_length}, sigma {sigma}, Adam "
        f"1e-2, lockstep, {args.seeds} seeds; best meta-objective (mean validation loss over a "
        f"run) so far at {int(at)} inner steps")
  print_table(rows, ["method", "compute", "best_mean", "best_min", "best_max", "seconds_per_seed"])
  print("paper (Figure 9): ES-Single reaches a lower meta-loss with less compute than PES, ES "
        "and random search")
  print(f"figure: {png}")
  return {"part": "many", "horizon": args.horizon, "num_particles": N, "seeds": args.seeds,
          "outer_steps": args.outer_steps, "rows": rows, "png": str(png)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--part", choices=("schedule", "many"), required=True)
  parser.add_argument("--horizon", type=int, default=1000, help="T (paper: 5000 schedule, 1000 many)")
  parser.add_argument("--num-particles", type=int, default=None,
                      help="N (default 20 schedule, 10 many; paper 1000 and 10)")
  parser.add_argument("--unroll-length", type=int, default=10)
  parser.add_argument("--outer-steps", type=int, default=300, help="NRES/PES updates")
  parser.add_argument("--eval-every", type=int, default=25)
  parser.add_argument("--eval-episodes", type=int, default=1)
  parser.add_argument("--seeds", type=int, default=4)
  parser.add_argument("--grid", type=int, default=11, help="grid points per axis (schedule)")
  parser.add_argument("--grid-episodes", type=int, default=2)
  parser.add_argument("--meta-loss", default="train", choices=("train", "telescoping"),
                      help="schedule: the sum of training losses (Figure 7) or the final loss (Figure 8)")
  parser.add_argument("--dataset", default="fashion_mnist", choices=("fashion_mnist", "digits"))
  parser.add_argument("--out", default="benchmarks/out/hparam_tuning")
  args = parser.parse_args(argv)
  emit_json(schedule(args) if args.part == "schedule" else many(args))


if __name__ == "__main__":
  main()
