"""Policy learning in MuJoCo: the NRES paper's Swimmer and HalfCheetah comparisons, and throughput.

    python -m benchmarks.policy_learning --part learning --task swimmer --seeds 5
    python -m benchmarks.policy_learning --part learning --task halfcheetah --seeds 2 \
        --estimators nres,full_es,tes --out runs/halfcheetah     # resumes there if interrupted
    python -m benchmarks.policy_learning --part throughput

**learning**: the authors' settings (``SETTINGS``; their N counts antithetic pairs and they
average the window's losses, as lopt-meta does, so their learning rates carry over; our
``--num-particles`` is twice their N). Every estimator gets the same environment steps per outer
update (NRES/PES/TES: N W; FullES: N T). Every ``--eval-every`` updates theta is evaluated on
``--eval-episodes`` fresh episodes (fixed keys, no noise; defaults per task in ``DEFAULTS``); the
table prints the mean return (min/max over seeds) against environment steps (every particle,
burn-in included), the environment steps each estimator needed to first reach a few return
levels (with and without its burn-in), and what explains a run that does not learn: the norm of
theta and the fraction of saturated actions (``|a| > 1``) at the end. Seed ``s`` draws
HalfCheetah's initial policy with ``policy_seed=s``.

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
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

import tasks
from benchmarks.common import emit_json, print_table, saved_run, time_interleaved
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
# Updates and evaluation: the NRES authors' HalfCheetah (1000 updates, 20 episodes every 4);
# Swimmer evaluated after every update, so that steps-to-a-return resolves one update.
DEFAULTS = {"swimmer": {"outer_steps": 200, "eval_every": 1, "eval_episodes": 5},
            "halfcheetah": {"outer_steps": 1000, "eval_every": 4, "eval_episodes": 20}}


def _evaluator(system, episodes: int):
  """``theta -> (mean return, action saturation)`` over ``episodes`` fixed episodes (no noise).
  Saturation is the fraction of action coordinates with ``|a| > 1`` (the control range of every
  registered task: MuJoCo clamps them, but the control cost is charged on the raw action)."""
  keys = jax.random.split(jax.random.key(12345), episodes)
  bound = system.bound()

  def episode(theta, key):
    init_key, step_key = jax.random.split(key)

    def step(state, k):
      new, loss = bound.step(theta, state, k)
      action = jax.tree.leaves(theta)[0].T @ state["obs"]  # the linear policy W^T obs
      return new, (loss, jnp.mean(jnp.abs(action) > 1.0))
    _, (losses, saturated) = jax.lax.scan(step, bound.init(init_key),
                                          jax.random.split(step_key, system.horizon))
    return -jnp.sum(losses), jnp.mean(saturated)

  @jax.jit
  def evaluate(theta):
    returns, saturated = jax.vmap(lambda k: episode(theta, k))(keys)
    return jnp.mean(returns), jnp.mean(saturated)
  return evaluate


def _system(task: str, seed: int):
  """Seed ``s`` also draws HalfCheetah's initial policy (``policy_seed=s``: several initial
  policies); Swimmer starts from zero whatever the seed."""
  return tasks.get(task, policy_seed=seed) if task == "halfcheetah" else tasks.get(task)


def run_one(task: str, setting: Setting, sigma: float, seed: int, outer_steps: int,
            eval_every: int, episodes: int) -> dict:
  """One estimator, one seed: the return curve against environment steps and wall time.

  Each curve point is ``{update, env_steps, seconds, return, saturation, theta_norm, grad_norm,
  meta_loss}``; ``env_steps`` counts every particle's steps, burn-in included; ``grad_norm`` and
  ``meta_loss`` are the means over the updates since the previous point."""
  system = _system(task, seed)
  kwargs = {"num_particles": setting.num_particles, "sigma": sigma}
  if setting.estimator != "full_es":
    kwargs["unroll_length"] = setting.unroll_length
  est = estimators.make(setting.estimator, system, **kwargs)
  trainer = Trainer(est, outer_optimizer("sgd", setting.lr))
  evaluate = _evaluator(system, episodes)
  start = time.perf_counter()
  state = trainer.init(jax.random.key(seed), system.theta0)
  burn_in = est.burn_in_steps(state.workers)

  def point(done, env_steps, metrics):
    ret, saturation = evaluate(state.theta)
    return {"update": done, "env_steps": env_steps, "seconds": time.perf_counter() - start,
            "return": float(ret), "saturation": float(saturation),
            "theta_norm": float(optax.global_norm(state.theta)),
            "grad_norm": float(np.mean(metrics["grad_norm"])) if metrics else None,
            "meta_loss": float(np.mean(metrics["meta_loss"])) if metrics else None}
  env_steps, curve, done = burn_in, [point(0, burn_in, None)], 0
  while done < outer_steps:
    n = min(eval_every, outer_steps - done)
    state, metrics = trainer.run(state, n)
    metrics = jax.device_get(metrics)
    env_steps += int(np.sum(metrics["unroll_steps"]))
    done += n
    curve.append(point(done, env_steps, metrics))
  return {"estimator": setting.estimator, "seed": seed, "burn_in_steps": burn_in,
          "steps_per_update": est.steps_per_estimate, "curve": curve,
          "theta": jax.tree.map(lambda x: np.asarray(x).tolist(), state.theta)}


def diagnose(task: str, theta, sigma: float, pairs: int, seed: int = 0) -> dict:
  """Why a policy does or does not learn, at ``theta``: ``pairs`` antithetic pairs over whole
  episodes (each pair shares its reset noise), as FullES draws them. Returns the return at
  theta, the mean and largest ``|R(theta + sigma e) - R(theta - sigma e)|`` of a pair, the norm
  of the FullES gradient of the mean return over all pairs, and the cosine between the
  estimates of two disjoint halves of the pairs: near 1 when the gradient stands out of the
  noise, near 0 when the pairs' differences are noise."""
  system = _system(task, seed)
  bound = system.bound()
  flat, unravel = jax.flatten_util.ravel_pytree(jax.tree.map(jnp.asarray, theta))
  k_noise, k_reset = jax.random.split(jax.random.key(seed))
  eps = jax.random.normal(k_noise, (pairs, flat.size))
  resets = jax.random.split(k_reset, pairs)

  def episode_return(th, key):
    return -jnp.sum(bound.episode_losses(unravel(th), key))

  @jax.jit
  def run(flat):
    plus = jax.vmap(episode_return)(flat + sigma * eps, resets)
    minus = jax.vmap(episode_return)(flat - sigma * eps, resets)
    centre = jax.vmap(episode_return, in_axes=(None, 0))(flat, resets)
    return plus, minus, centre
  plus, minus, centre = map(np.asarray, run(flat))
  diff = plus - minus
  grads = [np.mean((diff[h] / (2 * sigma))[:, None] * np.asarray(eps)[h], 0)
           for h in (slice(0, pairs // 2), slice(pairs // 2, pairs))]
  cosine = float(grads[0] @ grads[1] / (np.linalg.norm(grads[0]) * np.linalg.norm(grads[1])))
  return {"return": float(centre.mean()), "theta_norm": float(np.linalg.norm(flat)),
          "mean_abs_pair_diff": float(np.abs(diff).mean()), "max_abs_pair_diff":
          float(np.abs(diff).max()), "grad_norm": float(np.linalg.norm(np.mean(grads, 0))),
          "half_cosine": cosine}


def run_or_load(out_dir: str | None, config: dict, **run_args) -> dict:
  """``run_one(**run_args)``, or its saved result: with ``out_dir`` each finished run is written
  to ``out_dir/TASK_ESTIMATOR_seedS.json`` (atomically) and a rerun with the same ``config``
  loads it instead of running again, so a long sweep resumes after an interruption at the run
  it was in."""
  if out_dir is None:
    return run_one(**run_args)
  s = run_args["setting"]
  scale = "" if config.get("lr_scale", 1.0) == 1.0 else f"_lrx{config['lr_scale']:g}"
  name = f"{run_args['task']}_{s.estimator}{scale}_seed{run_args['seed']}.json"
  path = os.path.join(out_dir, name)
  record = dict(config, setting=dataclasses.asdict(s), seed=run_args["seed"])
  return saved_run(path, record, lambda: run_one(**run_args))


def _steps_to(curve: list[dict], level: float, offset: int = 0) -> int | None:
  return next((p["env_steps"] - offset for p in curve if p["return"] >= level), None)


def learning(args) -> dict:
  settings = SETTINGS[args.task]
  chosen = [dataclasses.replace(s, lr=s.lr * args.lr_scale) for s in settings["estimators"]
            if args.estimators is None or s.estimator in args.estimators]
  outer_steps = args.outer_steps or DEFAULTS[args.task]["outer_steps"]
  eval_every = args.eval_every or DEFAULTS[args.task]["eval_every"]
  episodes = args.eval_episodes or DEFAULTS[args.task]["eval_episodes"]
  config = {"task": args.task, "outer_steps": outer_steps, "eval_every": eval_every,
            "eval_episodes": episodes, "sigma": settings["sigma"]}
  if args.lr_scale != 1.0:
    config["lr_scale"] = args.lr_scale
  seeds = list(range(args.first_seed, args.first_seed + args.seeds))
  print(f"# {args.task}: T=1000, sigma={settings['sigma']}, plain SGD, {outer_steps} updates, "
        f"seeds {seeds}, evaluation over {episodes} episodes every "
        f"{eval_every} updates; N below counts particles (the paper's N counts pairs); losses "
        f"averaged over the window (the paper's convention)", flush=True)
  for s in chosen:
    print(f"#   {s.estimator}: N={s.num_particles} particles ({s.num_particles // 2} pairs), "
          f"W={s.unroll_length}, lr={s.lr:g}", flush=True)
  results = []
  for seed in seeds:
    for s in chosen:
      r = run_or_load(args.out, config, task=args.task, setting=s, sigma=settings["sigma"],
                      seed=seed, outer_steps=outer_steps, eval_every=eval_every,
                      episodes=episodes)
      last = r["curve"][-1]
      print(f"  {s.estimator:8s} seed {seed}: return {last['return']:9.2f} after "
            f"{last['env_steps']:,} env steps ({last['seconds']:.0f} s); |theta| "
            f"{last['theta_norm']:.3g}, saturated actions {last['saturation']:.1%}", flush=True)
      results.append(r)
  levels = THRESHOLDS[args.task]
  rows, summary = [], {}
  for s in chosen:
    runs = [r for r in results if r["estimator"] == s.estimator]
    returns = np.asarray([[p["return"] for p in r["curve"]] for r in runs])  # [seeds, evals]
    steps = np.asarray([p["env_steps"] for p in runs[0]["curve"]])
    burn_in = float(np.mean([r["burn_in_steps"] for r in runs]))  # seeds differ
    reach, after_burn_in = {}, {}
    for level in levels:
      hit = [_steps_to(r["curve"], level) for r in runs]
      after = [_steps_to(r["curve"], level, r["burn_in_steps"]) for r in runs]
      reach[level] = None if None in hit else float(np.mean(hit))
      after_burn_in[level] = None if None in after else float(np.mean(after))
    last = [r["curve"][-1] for r in runs]
    rows.append({"estimator": s.estimator, "N": s.num_particles, "W": s.unroll_length,
                 "lr": s.lr, "env_steps": int(steps[-1]), "burn_in": burn_in,
                 "return": float(returns[:, -1].mean()), "min": float(returns[:, -1].min()),
                 "max": float(returns[:, -1].max()), "best": float(returns.max(1).mean()),
                 "theta_norm": float(np.mean([p["theta_norm"] for p in last])),
                 "saturation": float(np.mean([p["saturation"] for p in last])),
                 **{f"steps_to_{level:g}": reach[level] for level in levels},
                 **{f"after_burn_in_{level:g}": after_burn_in[level] for level in levels}})
    def mean_of(key, runs=runs):
      return np.mean([[p[key] for p in r["curve"]] for r in runs], 0).tolist()
    summary[s.estimator] = {"env_steps": steps.tolist(), "mean_return": returns.mean(0).tolist(),
                            "min_return": returns.min(0).tolist(),
                            "max_return": returns.max(0).tolist(), "wall_s": mean_of("seconds"),
                            "theta_norm": mean_of("theta_norm"),
                            "saturation": mean_of("saturation"), "steps_to": reach,
                            "steps_to_after_burn_in": after_burn_in}
  print()
  print_table(rows, ["estimator", "N", "W", "lr", "env_steps", "burn_in", "return", "min", "max",
                     "best", "theta_norm", "saturation", *(f"steps_to_{lv:g}" for lv in levels)])
  print("\n# environment steps to first reach each return, burn-in excluded (mean over seeds)")
  print_table(rows, ["estimator", "burn_in", *(f"after_burn_in_{lv:g}" for lv in levels)])
  print("\n# mean return (min..max over seeds) against environment steps")
  for s in chosen:
    c = summary[s.estimator]
    marks = np.unique(np.linspace(0, len(c["env_steps"]) - 1, 6).astype(int))
    print(f"  {s.estimator:8s} " + "  ".join(
        f"{c['env_steps'][i] / 1e6:.2f}M: {c['mean_return'][i]:.0f} "
        f"({c['min_return'][i]:.0f}..{c['max_return'][i]:.0f})" for i in marks))
  print("\n# the paper's claim: NRES needs fewer environment steps than FullES, PES and TES to "
        "reach a given return (compare the steps_to_* columns; '' = not reached by every seed)")
  return {"part": "learning", **config, "seeds": seeds, "table": rows, "curves": summary}


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
  parser.add_argument("--first-seed", type=int, default=0,
                      help="learning: run seeds first-seed .. first-seed + seeds - 1")
  parser.add_argument("--estimators", type=lambda v: v.split(","), default=None,
                      help="learning: a comma-separated subset of the task's estimators")
  parser.add_argument("--outer-steps", type=int, default=None, help="learning: (task default)")
  parser.add_argument("--eval-every", type=int, default=None, help="learning: (task default)")
  parser.add_argument("--eval-episodes", type=int, default=None, help="learning: (task default)")
  parser.add_argument("--lr-scale", type=float, default=1.0,
                      help="learning: multiplies every setting's learning rate (sensitivity)")
  parser.add_argument("--out", default=None,
                      help="learning: a folder for each run's result; a rerun resumes there")
  parser.add_argument("--num-particles", type=int, default=600, help="throughput: N")
  parser.add_argument("--mjx-particles", type=int, default=64, help="throughput: N for MJX (0: skip)")
  parser.add_argument("--reps", type=int, default=12, help="throughput: timed rounds")
  args = parser.parse_args(argv)
  known = [s.estimator for s in SETTINGS[args.task]["estimators"]]
  if args.estimators is not None and not set(args.estimators) <= set(known):
    parser.error(f"--estimators: {args.task} compares {', '.join(known)}; got "
                 f"{','.join(args.estimators)}")
  emit_json(learning(args) if args.part == "learning" else throughput(args))


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
