"""Reproduce the papers' three small systems with their settings, and check the pass criteria.

    python -m benchmarks.reproduce [--only toy2d,influence_balancing,lorenz] [--seeds 3]

* toy2d (ES-Single paper, App. C / listing H): W=10, N=100, sigma=0.1, Adam 1e-2, lockstep,
  10,000 updates, x0=(1,1), theta0=ln(0.01, 0.01). The full-unroll *summed* loss starts near 2490;
  NRES and PES should end below 600 for most seeds; truncated ES should stay above 1000.
* influence balancing (n=23, p=10, never resets): W=1, sigma=0.1, 3000 SGD updates. PES with
  N=1000 should reach |theta + 1/6| < 1e-3; NRES with N=4 should converge for a typical seed (its
  noise is never resampled, so each seed's gradient is a fixed random multiple of the true one:
  we run 10 seeds and call a majority within 1e-2 after 3000 updates "typical");
  truncated ES and TBPTT with W=1 should move theta the wrong way (up from 0.5).
* Lorenz (T=2000, dt=0.005): NRES with W=100, 400 particles, sigma=0.04, SGD should bring the test
  loss (10 held-out initial conditions, start + N(0, I)) from about 311 to below 60 within 2000
  updates, ending with a in [9.5, 11.5] and r in [26, 27.5].

Learning rates are for lopt-meta's normalization (mean over pairs and window steps; see
``meta_train/engine/maths.py``) and are printed with the results. Prints a table, then one
JSON line.
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import tasks
from benchmarks.common import emit_json, print_table
from meta_train.estimators import NRES, PES, TBPTT, TruncatedES
from meta_train.engine.trainer import Trainer

TOY2D_LR = 1e-2          # Adam: scale-free, so the papers' value carries over
INFLUENCE_LR = 1e-4      # SGD; with W=1 our estimate equals the summed-window convention's
LORENZ_LR = 1e-5         # SGD; the NRES authors' value (their code uses our normalization)


def _train(est, optimizer, theta0, seed: int, steps: int, every: int, evaluate):
  """Runs ``steps`` outer steps; returns (final theta, [(step, evaluate(theta)), ...], seconds)."""
  trainer = Trainer(est, optimizer)
  start = time.perf_counter()
  state = trainer.init(jax.random.key(seed), theta0)
  curve = [(0, evaluate(state.theta))]
  done = 0
  while done < steps:
    n = min(every, steps - done)
    state, _ = trainer.run(state, n)
    done += n
    curve.append((done, evaluate(state.theta)))
  return state.theta, curve, time.perf_counter() - start


def toy2d(seeds: list[int]) -> list[dict]:
  system = tasks.get("toy2d")
  summed = jax.jit(lambda th: jnp.sum(system.episode_losses(th, jax.random.key(0))))
  start_loss = float(summed(system.theta0))
  rows = []
  for name, cls in (("nres", NRES), ("pes", PES), ("tes", TruncatedES)):
    for seed in seeds:
      est = cls(system, num_particles=100, sigma=0.1, unroll_length=10, lockstep=True)
      theta, curve, secs = _train(est, optax.adam(TOY2D_LR), system.theta0, seed, 10_000, 1000,
                                  lambda th: float(summed(th)))
      end = curve[-1][1]
      rows.append({"system": "toy2d", "estimator": name, "seed": seed, "lr": TOY2D_LR,
                   "start": start_loss, "end": end, "theta": np.asarray(theta).tolist(),
                   "seconds": secs,
                   "criterion": "end < 600" if name != "tes" else "end > 1000",
                   "pass": (end < 600) if name != "tes" else (end > 1000)})
  return rows


def influence_balancing(seeds: list[int]) -> list[dict]:
  system = tasks.get("influence_balancing")
  target = -1.0 / 6.0
  value = lambda th: float(th[0])
  rows = []

  def row(name, N, seed, theta, curve, secs, criterion, ok):
    return {"system": "influence_balancing", "estimator": name, "N": N, "seed": seed,
            "lr": INFLUENCE_LR, "start": curve[0][1], "end": curve[-1][1],
            "err": abs(curve[-1][1] - target), "seconds": secs, "criterion": criterion, "pass": ok}

  est = PES(system, num_particles=1000, sigma=0.1, unroll_length=1)
  theta, curve, secs = _train(est, optax.sgd(INFLUENCE_LR), system.theta0, seeds[0], 3000, 500, value)
  rows.append(row("pes", 1000, seeds[0], theta, curve, secs, "|theta+1/6| < 1e-3",
                  abs(curve[-1][1] - target) < 1e-3))
  # NRES never resamples here: each seed's estimate is a fixed random multiple of the gradient
  # (chi-square, 2 pairs), so convergence speed depends on the seed. Ten seeds (cheap) show it.
  for seed in range(max(10, len(seeds))):
    est = NRES(system, num_particles=4, sigma=0.1, unroll_length=1)
    theta, curve, secs = _train(est, optax.sgd(INFLUENCE_LR), system.theta0, seed, 3000, 500, value)
    rows.append(row("nres", 4, seed, theta, curve, secs, "|theta+1/6| < 1e-2",
                    abs(curve[-1][1] - target) < 1e-2))
  for name, est in (("tes", TruncatedES(system, num_particles=4, sigma=0.1, unroll_length=1)),
                    ("tbptt", TBPTT(system, num_particles=1, unroll_length=1))):
    theta, curve, secs = _train(est, optax.sgd(INFLUENCE_LR), system.theta0, seeds[0], 3000, 500,
                                value)
    rows.append(row(name, est.num_particles, seeds[0], theta, curve, secs, "theta rises above 0.5",
                    curve[-1][1] > 0.5))
  return rows


def lorenz(seeds: list[int]) -> list[dict]:
  system = tasks.get("lorenz")
  held_out = tasks.get("lorenz", init_sigma=1.0)
  test_loss = jax.jit(lambda th: held_out.mean_loss(th, jax.random.key(2023), num_episodes=10))
  rows = []
  for name, cls in (("nres", NRES), ("pes", PES)):
    for seed in seeds:
      est = cls(system, num_particles=400, sigma=0.04, unroll_length=100)
      theta, curve, secs = _train(est, optax.sgd(LORENZ_LR), system.theta0, seed, 2000, 100,
                                  lambda th: float(test_loss(th)))
      a, r = (float(x) for x in np.exp(np.asarray(theta)))
      below = next((s for s, v in curve if v < 60.0), None)
      ok = curve[-1][1] < 60.0 and 9.5 <= a <= 11.5 and 26.0 <= r <= 27.5
      rows.append({"system": "lorenz", "estimator": name, "seed": seed, "lr": LORENZ_LR,
                   "start": curve[0][1], "end": curve[-1][1], "first_below_60": below,
                   "a": a, "r": r, "seconds": secs,
                   "criterion": "test < 60, a in [9.5,11.5], r in [26,27.5]" if name == "nres"
                   else "(comparison)", "pass": ok if name == "nres" else None})
  return rows


SECTIONS = {"toy2d": toy2d, "influence_balancing": influence_balancing, "lorenz": lorenz}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
  parser.add_argument("--seeds", type=int, default=3, help="seeds per estimator")
  args = parser.parse_args(argv)
  seeds = list(range(args.seeds))
  results = {}
  for name in args.only.split(","):
    if name not in SECTIONS:
      parser.error(f"--only: unknown section {name!r}; valid: {', '.join(SECTIONS)}")
    print(f"\n== {name} ==", flush=True)
    rows = SECTIONS[name](seeds)
    columns = ["estimator", "N", "seed", "lr", "start", "end", "first_below_60", "a", "r",
               "seconds", "criterion", "pass"]
    print_table(rows, [c for c in columns if any(c in r for r in rows)])
    results[name] = rows

  verdicts = {}
  if "toy2d" in results:
    rows = results["toy2d"]
    start_ok = all(math.isclose(r["start"], 2490, rel_tol=0.01) for r in rows)
    most = lambda est: sum(r["pass"] for r in rows if r["estimator"] == est) * 2 > len(seeds)
    verdicts["toy2d"] = start_ok and most("nres") and most("pes") and all(
        r["pass"] for r in rows if r["estimator"] == "tes")
  if "influence_balancing" in results:
    rows = results["influence_balancing"]
    nres = [r["pass"] for r in rows if r["estimator"] == "nres"]
    print(f"influence balancing: NRES N=4 converged (|theta+1/6| < 1e-2 after 3000 updates) for "
          f"{sum(nres)} of {len(nres)} seeds")
    verdicts["influence_balancing"] = (
        all(r["pass"] for r in rows if r["estimator"] in ("pes", "tes", "tbptt"))
        and sum(nres) * 2 > len(nres))
  if "lorenz" in results:
    rows = [r for r in results["lorenz"] if r["estimator"] == "nres"]
    verdicts["lorenz"] = sum(r["pass"] for r in rows) * 2 > len(rows)
  print("\nverdicts:", {k: ("PASS" if v else "FAIL") for k, v in verdicts.items()})
  emit_json({"benchmark": "reproduce", "verdicts": verdicts, "results": results,
             "learning_rates": {"toy2d_adam": TOY2D_LR, "influence_sgd": INFLUENCE_LR,
                                "lorenz_sgd": LORENZ_LR}})


if __name__ == "__main__":
  main()
