"""Policy learning in MuJoCo: the NRES paper's Swimmer and HalfCheetah comparisons, and throughput.

    python -m benchmarks.policy_learning --part learning --task swimmer --seeds 5
    python -m benchmarks.policy_learning --part learning --task halfcheetah --seeds 2 --outer-steps 300
    python -m benchmarks.policy_learning --part throughput

**learning**: the authors' settings (``SETTINGS``; their N counts antithetic pairs and they
average the window's losses, as lopt-meta does, so their learning rates carry over; our
``--num-particles`` is twice their N). Every estimator gets the same environment steps per outer
update (NRES/PES/TES: N W; FullES: N T). Every ``--eval-every`` updates theta is evaluated on
``--eval-episodes`` fresh episodes (fixed keys, no noise); the table prints the mean return
(min/max over seeds) against environment steps (every particle, burn-in included), and the
environment steps each estimator needed to first reach a few return levels.

**throughput**: environment steps per second of one NRES window (N=600 particles, W=20,
HalfCheetah, the C-engine backend) against ``mujoco.rollout`` of the same environments and steps
with precomputed controls (the engine alone), timed interleaved in one process; and the MJX
backend's window on this machine.

The final line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import tasks
from benchmarks.common import emit_json, print_table, time_interleaved
from meta_train.engine import estimators
from meta_train.engine.trainer import Trainer, outer_optimizer


@dataclasses.dataclass(frozen=True)
class Setting:
  estimator: str
  num_particles: int   # ours: particles (twice the authors' N, which counts pairs)
  unroll_length: int   # W (FullES: T)
  lr: float            # plain SGD


# The NRES paper's settings (section 6 / its code), horizon T = 1000.
SETTINGS = {
    "swimmer": {"sigma": 0.3, "estimators": [
        Setting("nres", 60, 100, 3.0), Setting("pes", 60, 100, 1.0),
        Setting("tes", 60, 100, 30.0), Setting("full_es", 6, 1000, 1.0)]},
    "halfcheetah": {"sigma": 0.004, "estimators": [
        Setting("nres", 600, 20, 3e-5), Setting("pes", 600, 20, 3e-6),
        Setting("tes", 600, 20, 3e-5), Setting("full_es", 12, 1000, 3e-5)]},
}
THRESHOLDS = {"swimmer": (100.0, 200.0, 300.0, 340.0), "halfcheetah": (0.0, 500.0, 1000.0, 1500.0)}


def _evaluator(system, episodes: int):
  keys = jax.random.split(jax.random.key(12345), episodes)

  @jax.jit
  def mean_return(theta):
    losses = jax.vmap(lambda k: system.episode_losses(theta, k))(keys)
    return -jnp.mean(jnp.sum(losses, axis=1))
  return mean_return


def run_one(task: str, setting: Setting, sigma: float, seed: int, outer_steps: int,
            eval_every: int, episodes: int) -> dict:
  """One estimator, one seed: the return curve against environment steps and wall time."""
  system = tasks.get(task)
  kwargs = {"num_particles": setting.num_particles, "sigma": sigma}
  if setting.estimator != "full_es":
    kwargs["unroll_length"] = setting.unroll_length
  est = estimators.make(setting.estimator, system, **kwargs)
  trainer = Trainer(est, outer_optimizer("sgd", setting.lr))
  evaluate = _evaluator(system, episodes)
  start = time.perf_counter()
  state = trainer.init(jax.random.key(seed), system.theta0)
  burn_in = est.burn_in_steps(state.workers)
  env_steps, curve = burn_in, [(0, burn_in, 0.0, float(evaluate(state.theta)))]
  done = 0
  while done < outer_steps:
    n = min(eval_every, outer_steps - done)
    state, metrics = trainer.run(state, n)
    env_steps += int(np.sum(jax.device_get(metrics["unroll_steps"])))
    done += n
    curve.append((done, env_steps, time.perf_counter() - start, float(evaluate(state.theta))))
  return {"estimator": setting.estimator, "seed": seed, "burn_in_steps": burn_in,
          "steps_per_update": est.steps_per_estimate, "curve": curve}


def learning(args) -> dict:
  settings = SETTINGS[args.task]
  print(f"# {args.task}: T=1000, sigma={settings['sigma']}, plain SGD, {args.outer_steps} "
        f"updates, seeds {list(range(args.seeds))}; N below counts particles (the paper's N "
        f"counts pairs); losses averaged over the window (the paper's convention)", flush=True)
  results = []
  for s in settings["estimators"]:
    print(f"#   {s.estimator}: N={s.num_particles} particles ({s.num_particles // 2} pairs), "
          f"W={s.unroll_length}, lr={s.lr:g}", flush=True)
  for seed in range(args.seeds):
    for s in settings["estimators"]:
      r = run_one(args.task, s, settings["sigma"], seed, args.outer_steps, args.eval_every,
                  args.eval_episodes)
      last = r["curve"][-1]
      print(f"  {s.estimator:8s} seed {seed}: return {last[3]:9.2f} after {last[1]:,} env steps "
            f"({last[2]:.0f} s)", flush=True)
      results.append(r)
  rows, summary = [], {}
  for s in settings["estimators"]:
    runs = [r for r in results if r["estimator"] == s.estimator]
    returns = np.asarray([[p[3] for p in r["curve"]] for r in runs])  # [seeds, evals]
    steps = np.asarray([p[1] for p in runs[0]["curve"]])
    reach = {}
    for level in THRESHOLDS[args.task]:
      hit = [next((p[1] for p in r["curve"] if p[3] >= level), None) for r in runs]
      reach[level] = None if any(h is None for h in hit) else float(np.mean(hit))
    rows.append({"estimator": s.estimator, "N": s.num_particles, "W": s.unroll_length,
                 "lr": s.lr, "env_steps": int(steps[-1]), "burn_in": runs[0]["burn_in_steps"],
                 "return": float(returns[:, -1].mean()), "min": float(returns[:, -1].min()),
                 "max": float(returns[:, -1].max()),
                 **{f"steps_to_{level:g}": reach[level] for level in THRESHOLDS[args.task]}})
    summary[s.estimator] = {"env_steps": steps.tolist(), "mean_return": returns.mean(0).tolist(),
                            "min_return": returns.min(0).tolist(),
                            "max_return": returns.max(0).tolist(),
                            "wall_s": np.mean([[p[2] for p in r["curve"]] for r in runs], 0).tolist(),
                            "steps_to": reach}
  print()
  print_table(rows, ["estimator", "N", "W", "lr", "env_steps", "burn_in", "return", "min", "max",
                     *(f"steps_to_{level:g}" for level in THRESHOLDS[args.task])])
  print("\n# mean return (min..max over seeds) against environment steps")
  for s in settings["estimators"]:
    c = summary[s.estimator]
    marks = np.unique(np.linspace(0, len(c["env_steps"]) - 1, 6).astype(int))
    print(f"  {s.estimator:8s} " + "  ".join(
        f"{c['env_steps'][i] / 1e6:.2f}M: {c['mean_return'][i]:.0f} "
        f"({c['min_return'][i]:.0f}..{c['max_return'][i]:.0f})" for i in marks))
  print("\n# the paper's claim: NRES needs fewer environment steps than FullES, PES and TES to "
        "reach a given return (compare the steps_to_* columns; '' = not reached by every seed)")
  return {"part": "learning", "task": args.task, "seeds": args.seeds,
          "outer_steps": args.outer_steps, "sigma": settings["sigma"], "table": rows,
          "curves": summary}


def throughput(args) -> dict:
  import mujoco
  import mujoco.rollout

  from tasks.locomotion import physics

  n, w = args.num_particles, 20
  system = tasks.get("halfcheetah")
  nres = estimators.make("nres", system, num_particles=n, sigma=0.004, unroll_length=w)
  theta = system.theta0
  ws = nres.init(jax.random.key(0), theta)
  window = lambda: nres.estimate(jax.random.key(1), theta, ws)  # noqa: E731

  engine = physics.make("mujoco", tasks.locomotion.environments.from_gymnasium("HalfCheetah-v5")[0])
  model = engine.model
  nstep = w * engine.spec.frame_skip
  full = mujoco.mjtState.mjSTATE_FULLPHYSICS
  data = mujoco.MjData(model)
  state0 = np.empty(mujoco.mj_stateSize(model, full))
  mujoco.mj_getState(model, data, state0, full)
  initial = np.tile(state0, (n, 1))
  controls = np.random.default_rng(0).uniform(-1, 1, (n, nstep, model.nu))
  datas = [mujoco.MjData(model) for _ in range(engine.threads)]
  rollout = lambda: mujoco.rollout.rollout(model, datas, initial, controls,  # noqa: E731
                                           persistent_pool=True)
  times = time_interleaved({"nres_window": window, "mujoco_rollout": rollout}, reps=args.reps)
  env_steps = n * w
  rows = [{"what": f"NRES window, N={n}, W={w} (mujoco backend)", "s": times["nres_window"],
           "env_steps_per_s": env_steps / times["nres_window"]},
          {"what": f"mujoco.rollout, {n} envs x {nstep} physics steps, {engine.threads} threads",
           "s": times["mujoco_rollout"], "env_steps_per_s": env_steps / times["mujoco_rollout"]}]
  ratio = times["mujoco_rollout"] / times["nres_window"]
  out = {"part": "throughput", "num_particles": n, "unroll_length": w, "threads": engine.threads,
         "nres_env_steps_per_s": env_steps / times["nres_window"],
         "rollout_env_steps_per_s": env_steps / times["mujoco_rollout"],
         "nres_vs_rollout": ratio, "target": 0.5}
  if args.mjx_particles:
    mjx_system = tasks.get("halfcheetah", backend="mjx")
    m = args.mjx_particles
    mjx_nres = estimators.make("nres", mjx_system, num_particles=m, sigma=0.004, unroll_length=w)
    mjx_ws = mjx_nres.init(jax.random.key(0), theta)
    t = time_interleaved({"mjx": lambda: mjx_nres.estimate(jax.random.key(1), theta, mjx_ws)},
                         reps=max(3, args.reps // 4))["mjx"]
    rows.append({"what": f"NRES window, N={m}, W={w} (mjx backend, {jax.default_backend()})",
                 "s": t, "env_steps_per_s": m * w / t})
    out["mjx_env_steps_per_s"] = m * w / t
    out["mjx_particles"] = m
  print_table(rows, ["what", "s", "env_steps_per_s"])
  print(f"\n# NRES window / mujoco.rollout throughput: {ratio:.2f}x (target >= 0.5x)")
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--part", choices=["learning", "throughput"], default="learning")
  parser.add_argument("--task", choices=sorted(SETTINGS), default="swimmer")
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--outer-steps", type=int, default=200)
  parser.add_argument("--eval-every", type=int, default=10)
  parser.add_argument("--eval-episodes", type=int, default=5)
  parser.add_argument("--num-particles", type=int, default=600, help="throughput: N")
  parser.add_argument("--mjx-particles", type=int, default=64, help="throughput: N for MJX (0: skip)")
  parser.add_argument("--reps", type=int, default=12, help="throughput: timed rounds")
  args = parser.parse_args(argv)
  emit_json(learning(args) if args.part == "learning" else throughput(args))


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
