"""Meta-train MLPLOpt within a fixed time budget, then compare it with tuned Adam.

    python -m benchmarks.lopt_vs_adam [--budget-minutes 12] [--tasks digits_mlp,fashion_mnist_mlp]

For each task (``fashion_mnist_mlp`` only where its data is present), NRES and PES each
meta-train MLPLOpt for the same wall-clock budget (compilation included) from the same theta:
N particles, window W, sigma, outer Adam, horizon T, training-loss meta-loss. Then, on 5 held-out
inner seeds (initializations and data orders never seen in meta-training), each learned
optimizer trains the task for the full horizon beside Adam at learning rates
{1e-3, 3e-3, 1e-2, 3e-2}; the figure is the ratio of the mean training loss (normalized, over all
T steps and seeds) of the learned optimizer to that of the best Adam. Below 1: better than tuned
Adam. Also printed: the meta-loss of NRES and PES against wall time at equal budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import numpy as np
import optax

import lopt_meta
import tasks
from benchmarks.common import emit_json, print_table
from lopt_meta.errors import ConfigError
from meta_train.estimators import NRES, PES
from meta_train.command.evaluation import curve_fn
from meta_train.engine.trainer import Trainer

ADAM_LRS = (1e-3, 3e-3, 1e-2, 3e-2)
HELD_OUT_SEEDS = 5


@dataclasses.dataclass
class Settings:
  horizon: int = 1000
  num_particles: int = 32
  unroll_length: int = 20
  sigma: float = 0.01
  outer_lr: float = 1e-3
  budget_minutes: float = 12.0
  chunk: int = 50


def meta_train(system, estimator_cls, s: Settings, seed: int):
  """Trains until the budget is spent; returns (theta, curve rows, outer steps)."""
  est = estimator_cls(system, num_particles=s.num_particles, sigma=s.sigma,
                      unroll_length=s.unroll_length)
  trainer = Trainer(est, optax.adam(s.outer_lr))
  start = time.perf_counter()
  state = trainer.init(jax.random.key(seed), system.theta0)
  curve, steps = [], 0
  while time.perf_counter() - start < s.budget_minutes * 60:
    state, metrics = trainer.run(state, s.chunk)
    steps += s.chunk
    curve.append({"step": steps, "time_s": time.perf_counter() - start,
                  "meta_loss": float(np.mean(np.asarray(metrics["meta_loss"])))})
  return state.theta, curve, steps


def held_out_curves(task, theta, lopt, s: Settings):
  """Mean training-loss curves [T] on the held-out seeds: the learned optimizer and each Adam."""
  key = jax.random.key(10_000)  # training uses keys from its own seed: these episodes are new
  def curve(opt, params):
    system = tasks.learned_optimizer_system(task, opt, horizon=s.horizon, meta_loss="train")
    return np.asarray(curve_fn(system, HELD_OUT_SEEDS, s.horizon)(params, key, system.data))
  out = {"learned": curve(lopt, theta)}
  for lr in ADAM_LRS:
    out[f"adam_{lr:g}"] = curve(lopt_meta.Adam(learning_rate=lr), {})
  return out


def run_task(task_name: str, s: Settings, seed: int) -> dict:
  task = tasks.build(task_name)
  lopt = lopt_meta.MLPLOpt()
  theta0 = lopt.init_theta(jax.random.key(seed))
  system = tasks.learned_optimizer_system(task, lopt, horizon=s.horizon, meta_loss="train",
                                          theta0=theta0)
  result = {"task": task_name, "settings": dataclasses.asdict(s)}
  for name, cls in (("nres", NRES), ("pes", PES)):
    print(f"[{task_name}] meta-training with {name.upper()} for {s.budget_minutes:g} min ...",
          flush=True)
    theta, curve, steps = meta_train(system, cls, s, seed)
    curves = held_out_curves(task, theta, lopt, s)
    adam = {k: float(np.mean(v)) for k, v in curves.items() if k.startswith("adam")}
    best = min(adam, key=adam.get)
    learned = float(np.mean(curves["learned"]))
    result[name] = {"outer_steps": steps, "curve": curve, "held_out_loss": learned,
                    "held_out_final_loss": float(curves["learned"][-1]),
                    "adam_losses": adam, "best_adam": best, "best_adam_loss": adam[best],
                    "best_adam_final_loss": float(curves[best][-1]),
                    "ratio_to_adam": learned / adam[best]}
  return result


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tasks", default="digits_mlp,fashion_mnist_mlp")
  parser.add_argument("--budget-minutes", type=float, default=Settings.budget_minutes,
                      help="wall-clock budget of each meta-training run (NRES, PES)")
  parser.add_argument("--seed", type=int, default=0)
  for field in ("horizon", "num_particles", "unroll_length"):
    parser.add_argument(f"--{field.replace('_', '-')}", type=int, default=getattr(Settings, field))
  for field in ("sigma", "outer_lr"):
    parser.add_argument(f"--{field.replace('_', '-')}", type=float, default=getattr(Settings, field))
  args = parser.parse_args(argv)
  s = Settings(horizon=args.horizon, num_particles=args.num_particles,
               unroll_length=args.unroll_length, sigma=args.sigma, outer_lr=args.outer_lr,
               budget_minutes=args.budget_minutes)
  results = []
  for name in args.tasks.split(","):
    try:
      results.append(run_task(name, s, args.seed))
    except ConfigError as e:  # e.g. FashionMNIST not installed: say so and go on
      print(f"[{name}] skipped: {e}")

  rows = []
  for r in results:
    for est in ("nres", "pes"):
      e = r[est]
      rows.append({"task": r["task"], "estimator": est, "outer_steps": e["outer_steps"],
                   "final_meta_loss": e["curve"][-1]["meta_loss"],
                   "held_out_loss": e["held_out_loss"], "best_adam": e["best_adam"],
                   "best_adam_loss": e["best_adam_loss"], "ratio_to_adam": e["ratio_to_adam"],
                   "beats_adam": e["ratio_to_adam"] <= 1.0})
  print(f"\nMLPLOpt meta-trained for {s.budget_minutes:g} min per estimator (N={s.num_particles}, "
        f"W={s.unroll_length}, sigma={s.sigma}, Adam {s.outer_lr:g}, T={s.horizon}); held-out "
        f"mean training loss over {HELD_OUT_SEEDS} seeds x {s.horizon} steps vs the best Adam of "
        f"{list(ADAM_LRS)}:")
  print_table(rows, ["task", "estimator", "outer_steps", "final_meta_loss", "held_out_loss",
                     "best_adam", "best_adam_loss", "ratio_to_adam", "beats_adam"])
  for r in results:
    print(f"\n[{r['task']}] meta-loss (mean over the last chunk) at equal wall time:")
    marks = np.linspace(0.1, 1.0, 10) * s.budget_minutes * 60
    table = []
    for t in marks:
      row = {"time_s": float(t)}
      for est in ("nres", "pes"):
        before = [c for c in r[est]["curve"] if c["time_s"] <= t]
        row[est] = before[-1]["meta_loss"] if before else None
      table.append(row)
    print_table(table, ["time_s", "nres", "pes"])
  emit_json({"benchmark": "lopt_vs_adam", "results": results})


if __name__ == "__main__":
  main()
