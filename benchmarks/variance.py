"""Total variance tr(Cov) of the ES estimators at fixed theta and equal compute.

    python -m benchmarks.variance [--replicates 400] [--bootstrap 1000]

Every estimate costs 2T unroll steps:

* FullES: one antithetic pair unrolled over the whole episode.
* NRES averaged over the windows of an episode (the NRES poster's ``W/T sum_i NRES_i``): T/W
  pairs, pair i burned in to position i*W of its episode, each contributing one window.
* PES and GPES_K: the same T/W stratified pairs, each burned in under its own noise schedule
  (PES: fresh noise every window; GPES_K: every K steps from the episode start).

Each estimator is run for R independent replicates (vmapped); tr(Cov) is the sum of the
per-coordinate sample variances, with a percentile bootstrap 95% interval over the replicates.
GPES_K estimators target other smoothed objectives than FullES and NRES (see
meta_train/engine/estimators/pes.py), so the table also gives the
norm of each mean. The NRES poster reports, for a learned-optimizer task with T=1000 and W=1,
NRES ~1.5 against FullES ~860; this prints what it measures here, whatever it is.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import tasks
from benchmarks.common import emit_json, print_table
from meta_train.engine import window
from meta_train.estimators import GPES, NRES, PES, FullES
from meta_train.engine.estimators.base import ANTITHETIC


def _flat(tree) -> jax.Array:
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def replicate(est, system, theta, positions, key, num: int) -> np.ndarray:
  """``num`` independent estimates ``[num, d]``: fresh workers at ``positions`` (burned in
  under the estimator's own noise schedule), then one window."""
  def one(k):
    k_init, k_burn, k_est = jax.random.split(k, 3)
    ws = est.init(k_init, theta)
    if positions is not None:
      ws = window.burn_in(system, theta, ws, k_burn, positions, signs=ANTITHETIC,
                           sigma=est.sigma, schedule=est.schedule,
                           window_length=est.unroll_length)
    grad, _, _ = est.estimate(k_est, theta, ws)
    return _flat(grad)
  return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(key, num)))


def total_variance(samples: np.ndarray, num_boot: int, rng: np.random.Generator):
  """tr(Cov) of the rows of ``samples`` and a percentile bootstrap 95% interval."""
  tv = float(np.sum(np.var(samples, axis=0, ddof=1)))
  n = len(samples)
  boots = [np.sum(np.var(samples[rng.integers(0, n, n)], axis=0, ddof=1)) for _ in range(num_boot)]
  lo, hi = np.percentile(boots, [2.5, 97.5])
  return tv, float(lo), float(hi)


def study(system, theta, W: int, sigma: float, Ks: list[int], num: int, num_boot: int,
          seed: int) -> list[dict]:
  T = system.horizon
  pairs = T // W
  positions = jnp.arange(pairs, dtype=jnp.int32) * W
  N = 2 * pairs
  estimators = [("full_es", "-", FullES(system, num_particles=2, sigma=sigma), None)]
  estimators.append(("nres (mean over windows)", "T", NRES(system, num_particles=N, sigma=sigma,
                                                          unroll_length=W, lockstep=True), positions))
  estimators.append(("pes", "W", PES(system, num_particles=N, sigma=sigma, unroll_length=W,
                                     lockstep=True), positions))
  for K in Ks:
    estimators.append(("gpes", str(K), GPES(system, num_particles=N, sigma=sigma,
                                             unroll_length=W, K=K, lockstep=True), positions))
  rng = np.random.default_rng(seed)
  rows = []
  for name, K, est, pos in estimators:
    start = time.perf_counter()
    samples = replicate(est, system, theta, pos, jax.random.key(seed), num)
    finite = np.all(np.isfinite(samples), axis=1)
    tv, lo, hi = total_variance(samples[finite], num_boot, rng)
    rows.append({"system": system.name, "T": T, "W": W, "estimator": name, "K": K,
                 "steps_per_estimate": 2 * T, "tr_cov": tv, "ci_low": lo, "ci_high": hi,
                 "mean_norm": float(np.linalg.norm(samples[finite].mean(axis=0))),
                 "replicates": int(finite.sum()), "seconds": time.perf_counter() - start})
  full = rows[0]["tr_cov"]
  for r in rows:
    r["vs_full_es"] = r["tr_cov"] / full
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--replicates", type=int, default=400)
  parser.add_argument("--bootstrap", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  lorenz, toy = tasks.get("lorenz"), tasks.get("toy2d")
  settings = [
      (lorenz, lorenz.theta0, 100, 0.04, [400, 1000]),
      (lorenz, lorenz.theta0, 10, 0.04, [100, 1000]),
      (toy, toy.theta0, 10, 0.1, [20, 50]),
      (toy, toy.theta0, 1, 0.1, [10, 50]),
  ]
  rows = []
  for system, theta, W, sigma, Ks in settings:
    rows += study(system, theta, W, sigma, Ks, args.replicates, args.bootstrap, args.seed)
  print("Total variance tr(Cov) at fixed theta0, equal compute (2T unroll steps per estimate), "
        f"{args.replicates} replicates, bootstrap 95% CI")
  print_table(rows, ["system", "T", "W", "estimator", "K", "tr_cov", "ci_low", "ci_high",
                     "vs_full_es", "mean_norm", "seconds"])
  emit_json({"benchmark": "variance", "replicates": args.replicates, "results": rows})


if __name__ == "__main__":
  main()
