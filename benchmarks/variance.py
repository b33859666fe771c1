"""Total variance tr(Cov) of the ES estimators at fixed theta and equal compute.

    python -m benchmarks.variance [--replicates 400] [--bootstrap 1000]
    python -m benchmarks.variance --part lopt        # the NRES poster's table (see below)

Every estimate costs 2T unroll steps:

* FullES: one antithetic pair unrolled over the whole episode.
* NRES averaged over the windows of an episode (the NRES poster's ``W/T sum_i NRES_i``): T/W
  pairs, pair i burned in to position i*W of its episode, each contributing one window.
* PES and GPES_K: the same T/W stratified pairs, each burned in under its own noise rule
  (PES: fresh noise every window; GPES_K: every K steps from the episode start).

Each estimator is run for R independent replicates (vmapped); tr(Cov) is the sum of the
per-coordinate sample variances, with a percentile bootstrap 95% interval over the replicates.
GPES_K estimators target other smoothed objectives than FullES and NRES (see
meta_train/engine/estimators/pes.py), so the table also gives the
norm of each mean. The NRES poster reports, for a learned-optimizer task with T=1000 and W=1,
NRES ~1.5 against FullES ~860; this prints what it measures here, whatever it is.

**--part lopt**, the poster's table: a learned optimizer (``MLPLOpt``, one hidden layer of 8)
training an MLP on 4x4 digits (16 -> 8 -> 10, batch 32), T = 1000, W = 1, is meta-trained with
NRES; at 8 points theta_j along that run, tr Cov of FullES (one pair) against that of
``(W/T) sum_i NRES_i`` (equal compute, 2T steps). Running all T/W = 1000 pairs (each burned in
to its window) costs T^2 steps per replicate, so the NRES term is measured on K stratified
windows: the pairs are independent, so ``tr Cov((W/T) sum_i NRES_i) = (W/T) mean_i tr Cov(NRES_i)``
and ``mean_i tr Cov(NRES_i)`` is estimated as ``K tr Cov`` of the mean of K pairs at the
midpoints of K equal strata of the episode (a midpoint-rule estimate of the mean over windows).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import tasks
from benchmarks.common import emit_json, print_table
from lopt_meta import MLPLOpt
from meta_train.engine import window
from meta_train.engine.window import ANTITHETIC
from meta_train.engine.trainer import Trainer
from meta_train.estimators import GPES, NRES, PES, FullES
from tasks.image_tasks import image_mlp
from tasks.lopt_system import learned_optimizer_system

# The poster's table (T = 1000, W = 1; tr Cov at 8 points of a meta-training run, +- 95% CI).
POSTER = {"nres": (1.47, 15.74, 4.28, 3.20, 4.47, 4.42, 5.33, 6.62),
          "full_es": (864.34, 513.50, 201.38, 684.85, 181.06, 288.61, 448.30, 154.86)}


def _flat(tree) -> jax.Array:
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def replicator(est, system, positions, num: int):
  """A jitted ``(theta, key) -> [num, d]``: ``num`` independent estimates, each from fresh
  workers at ``positions`` (burned in under the estimator's own noise rule), then one
  window. Build it once and call it at many thetas (one compilation)."""
  def one(theta, k):
    k_init, k_burn, k_est = jax.random.split(k, 3)
    ws = est.init_fn(k_init, theta, system.data)
    if positions is not None:
      ws = window.burn_in(system.bind(system.data), theta, ws, k_burn, positions,
                          signs=ANTITHETIC, sigma=est.sigma, noise_rule=est.noise_rule,
                          window_length=est.unroll_length)
    grad, _, _ = est.estimate_fn(k_est, theta, ws, system.data)
    return _flat(grad)
  return jax.jit(lambda theta, key: jax.vmap(lambda k: one(theta, k))(jax.random.split(key, num)))


def replicate(est, system, theta, positions, key, num: int) -> np.ndarray:
  """``num`` independent estimates ``[num, d]`` at ``theta`` (see :func:`replicator`)."""
  return np.asarray(replicator(est, system, positions, num)(theta, key))


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


def lopt_system():
  """The poster table's system: MLPLOpt (hidden 8) training a 16 -> 8 -> 10 MLP on 4x4 digits."""
  task = image_mlp(dataset="digits", image_size=4, hidden_sizes=(8,), batch_size=32)
  return learned_optimizer_system(task, MLPLOpt(hidden_sizes=(8,)), horizon=1000)


def lopt_study(args) -> list[dict]:
  """tr Cov of FullES and of NRES averaged over windows at 8 points of an NRES meta-training run."""
  system = lopt_system()
  T, W, sigma, K = system.horizon, 1, args.sigma, args.strata
  trainer = Trainer(NRES(system, num_particles=64, sigma=sigma, unroll_length=10),
                    optax.adam(args.meta_lr))
  state = trainer.init(jax.random.key(args.seed), system.theta0)
  positions = (jnp.arange(K, dtype=jnp.int32) * T + T // 2) // K
  full = FullES(system, num_particles=2, sigma=sigma)
  nres = NRES(system, num_particles=2 * K, sigma=sigma, unroll_length=W, lockstep=True)
  evaluate = jax.jit(lambda th, d: system.bind(d).mean_loss(th, jax.random.key(7), 16))
  full_at = replicator(full, system, None, args.replicates)
  nres_at = replicator(nres, system, positions, args.replicates)
  rng = np.random.default_rng(args.seed)
  rows = []
  for j in range(args.points):
    if j:
      state, _ = trainer.run(state, args.meta_steps)
    theta, start = state.theta, time.perf_counter()
    f = np.asarray(full_at(theta, jax.random.key(100 + j)))
    f_tv, f_lo, f_hi = total_variance(f[np.all(np.isfinite(f), 1)], args.bootstrap, rng)
    n = np.asarray(nres_at(theta, jax.random.key(200 + j)))
    scale = K * W / T   # (W/T) mean_i tr Cov(NRES_i) = (W/T) K tr Cov(mean of the K pairs)
    n_tv, n_lo, n_hi = (scale * v for v in
                        total_variance(n[np.all(np.isfinite(n), 1)], args.bootstrap, rng))
    rows.append({"j": j + 1, "meta_step": j * args.meta_steps,
                 "meta_loss": float(evaluate(theta, system.data)),
                 "nres_tr_cov": n_tv, "nres_lo": n_lo, "nres_hi": n_hi,
                 "full_es_tr_cov": f_tv, "full_es_lo": f_lo, "full_es_hi": f_hi,
                 "full_es_over_nres": f_tv / n_tv,
                 "poster_nres": POSTER["nres"][j] if j < 8 else None,
                 "poster_full_es": POSTER["full_es"][j] if j < 8 else None,
                 "seconds": time.perf_counter() - start})
    print(f"  theta_{j + 1} (meta-step {j * args.meta_steps}): NRES {n_tv:.4g} "
          f"[{n_lo:.4g}, {n_hi:.4g}], FullES {f_tv:.4g} [{f_lo:.4g}, {f_hi:.4g}]", flush=True)
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--part", choices=["systems", "lopt"], default="systems")
  parser.add_argument("--replicates", type=int, default=None,
                      help="estimates per row (systems: 400, lopt: 128)")
  parser.add_argument("--bootstrap", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--strata", type=int, default=16, help="lopt: K windows per NRES replicate")
  parser.add_argument("--sigma", type=float, default=0.01, help="lopt")
  parser.add_argument("--points", type=int, default=8, help="lopt: thetas along the run")
  parser.add_argument("--meta-steps", type=int, default=250, help="lopt: NRES steps between thetas")
  parser.add_argument("--meta-lr", type=float, default=3e-3, help="lopt: Adam")
  args = parser.parse_args(argv)
  if args.part == "lopt":
    args.replicates = args.replicates or 128
    print(f"# the NRES poster's table: {lopt_system().name}, T=1000, W=1, sigma={args.sigma}, "
          f"{args.replicates} replicates, NRES over {args.strata} strata, bootstrap 95% CI",
          flush=True)
    rows = lopt_study(args)
    print_table(rows, ["j", "meta_step", "meta_loss", "nres_tr_cov", "nres_lo", "nres_hi",
                       "full_es_tr_cov", "full_es_lo", "full_es_hi", "full_es_over_nres",
                       "poster_nres", "poster_full_es"])
    ratios = [r["full_es_over_nres"] for r in rows]
    print(f"\n# FullES / NRES total variance: {min(ratios):.3g} .. {max(ratios):.3g} "
          f"(the poster: {min(f / n for f, n in zip(POSTER['full_es'], POSTER['nres'])):.3g} .. "
          f"{max(f / n for f, n in zip(POSTER['full_es'], POSTER['nres'])):.3g})")
    emit_json({"benchmark": "variance", "part": "lopt", "replicates": args.replicates,
               "strata": args.strata, "results": rows})
    return
  args.replicates = args.replicates or 400
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
