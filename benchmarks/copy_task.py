"""The ES-Single paper's LSTM copy task, theta the LSTM's weights, learned with a curriculum.

    python -m benchmarks.copy_task [--estimators nres,pes,tes,tbptt] [--seeds 2]
        [--tokens 2e7] [--out runs/copy_task]          # resumes there if interrupted

The system is :mod:`tasks.rnn_copy` (``B=32`` streams of copy sequences, ``T`` steps an episode).
Every estimator feeds Adam (the paper's default betas) and runs to the same number of *tokens
ingested* (every particle's steps times ``B``, burn-in included: the paper's x-axis, data-time
rather than compute). NRES and PES run fully online (``W = 1``), truncated ES and truncated
backprop with ``W`` in ``--truncations`` (the paper: 25 and 50); truncated backprop's gradient
is exact per stream, so it runs ``--tbptt-particles`` (1) streams of the batch. The curriculum
(Mujika et al. 2018, as the paper): every ``--check-every`` updates the unperturbed theta is scored by
:func:`tasks.rnn_copy.copy_loss` on a fresh batch at the current ``L``; when the moving average
(decay 0.9) of those scores drops below 0.15 nats per bit, ``L`` grows by one and the average
restarts at ln 2. The table reports the longest ``L`` reached (the paper's "maximum sequence
length successfully copied") per estimator, min/max over seeds, and the tokens each needed to
reach a few lengths.

The paper's settings are a 100-unit LSTM (42,202 weights here; it reports 42,804), N = 1000
particles and a grid over the learning rate and sigma. The defaults here are scaled to a 2-core
CPU (``--hidden 32``, 256 particles); pass the paper's with ``--hidden 100 --particles 1000``.
The final line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import tasks
from benchmarks.common import emit_json, print_table, saved_run
from meta_train.engine import estimators
from meta_train.engine.trainer import Trainer
from tasks import rnn_copy

THRESHOLD = 0.15   # nats per bit: the curriculum moves on below it
DECAY = 0.9        # of the moving average of the curriculum's scores
MILESTONES = (5, 10, 15, 20, 30)


@dataclasses.dataclass(frozen=True)
class Setting:
  estimator: str
  unroll_length: int


def run_one(setting: Setting, args, seed: int) -> dict:
  """One estimator, one seed: the curriculum's ``L`` against tokens ingested."""
  system = tasks.get("rnn_copy", hidden_size=args.hidden, horizon=args.horizon,
                     max_length=args.max_length, seed=seed)
  batch = jax.tree.leaves(system.init(jax.random.key(0), system.data))[0].shape[0]
  kwargs = {"num_particles": args.particles, "unroll_length": setting.unroll_length}
  if setting.estimator == "tbptt":
    kwargs["num_particles"] = args.tbptt_particles
  else:
    kwargs["sigma"] = args.sigma
  est = estimators.make(setting.estimator, system, **kwargs)
  trainer = Trainer(est, optax.adam(args.lr))
  score = jax.jit(lambda theta, key, length: rnn_copy.copy_loss(system, theta, key, length))
  start = time.perf_counter()
  state = trainer.init(jax.random.key(seed), system.theta0)
  steps = est.burn_in_steps(state.workers)
  length, average, updates = 1, math.log(2.0), 0
  key = jax.random.key(10_000 + seed)
  curve = [{"update": 0, "tokens": steps * batch, "length": length, "average": average,
            "seconds": time.perf_counter() - start}]
  while steps * batch < args.tokens and length < args.max_length:
    data = {"length": jnp.asarray(length, jnp.int32)}
    state, metrics = trainer.run(state, args.check_every, data=data)
    steps += int(np.sum(jax.device_get(metrics["unroll_steps"])))
    updates += args.check_every
    key, k = jax.random.split(key)
    loss = float(score(state.theta, k, length))
    average = DECAY * average + (1 - DECAY) * (loss if math.isfinite(loss) else math.log(2.0))
    if average < THRESHOLD:
      length, average = length + 1, math.log(2.0)
      curve.append({"update": updates, "tokens": steps * batch, "length": length,
                    "average": average, "seconds": time.perf_counter() - start})
  curve.append({"update": updates, "tokens": steps * batch, "length": length, "average": average,
                "seconds": time.perf_counter() - start})
  return {"estimator": setting.estimator, "W": setting.unroll_length, "seed": seed,
          "curve": curve}


def run_or_load(setting: Setting, args, seed: int) -> dict:
  """``run_one``, or its result saved in ``--out`` by an earlier run of the same configuration."""
  if args.out is None:
    return run_one(setting, args, seed)
  config = {k: getattr(args, k) for k in ("hidden", "particles", "horizon", "max_length", "lr",
                                         "sigma", "tokens", "check_every")}
  if setting.estimator == "tbptt":
    config.update(particles=args.tbptt_particles, sigma=None)
  config.update(setting=dataclasses.asdict(setting), seed=seed)
  path = os.path.join(args.out, f"{setting.estimator}_W{setting.unroll_length}_seed{seed}.json")
  return saved_run(path, config, lambda: run_one(setting, args, seed))


def settings_of(args) -> list[Setting]:
  out = []
  for name in args.estimators:
    windows = [1] if name in ("nres", "pes") else args.truncations
    out += [Setting(name, w) for w in windows]
  return out


def _tokens_to(curve: list[dict], length: int) -> float | None:
  return next((p["tokens"] for p in curve if p["length"] >= length), None)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--estimators", type=lambda v: v.split(","),
                      default=["nres", "pes", "tes", "tbptt"])
  parser.add_argument("--truncations", type=lambda v: [int(w) for w in v.split(",")],
                      default=[25, 50], help="W of truncated ES and truncated backprop")
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument("--hidden", type=int, default=32)
  parser.add_argument("--particles", type=int, default=256)
  parser.add_argument("--tbptt-particles", type=int, default=1,
                      help="streams of truncated backprop (each a batch of B)")
  parser.add_argument("--horizon", type=int, default=200, help="T: steps per episode")
  parser.add_argument("--max-length", type=int, default=40)
  parser.add_argument("--lr", type=float, default=1e-2, help="Adam")
  parser.add_argument("--sigma", type=float, default=0.01)
  parser.add_argument("--tokens", type=float, default=2e7, help="tokens ingested per run")
  parser.add_argument("--check-every", type=int, default=10, help="updates between scores")
  parser.add_argument("--out", default=None, help="a folder for each run's result (resume)")
  args = parser.parse_args(argv)
  known = ("nres", "pes", "tes", "tbptt")
  if not set(args.estimators) <= set(known):
    parser.error(f"--estimators: one or more of {', '.join(known)}; got "
                 f"{','.join(args.estimators)}")
  print(f"# copy task: LSTM of {args.hidden} units, {args.particles} particles, T={args.horizon}, "
        f"Adam {args.lr:g}, sigma {args.sigma:g}, {args.tokens:.3g} tokens per run, "
        f"{args.seeds} seeds", flush=True)
  results = []
  for seed in range(args.seeds):
    for s in settings_of(args):
      r = run_or_load(s, args, seed)
      last = r["curve"][-1]
      print(f"  {s.estimator:6s} W={s.unroll_length:<3d} seed {seed}: L={last['length']} after "
            f"{last['tokens']:.3g} tokens, {last['update']} updates ({last['seconds']:.0f} s)",
            flush=True)
      results.append(r)
  rows = []
  for s in settings_of(args):
    runs = [r for r in results if (r["estimator"], r["W"]) == (s.estimator, s.unroll_length)]
    final = [r["curve"][-1]["length"] for r in runs]
    row = {"estimator": s.estimator, "W": s.unroll_length, "L": float(np.mean(final)),
           "L_min": min(final), "L_max": max(final),
           "tokens": float(np.mean([r["curve"][-1]["tokens"] for r in runs])),
           "seconds": float(np.mean([r["curve"][-1]["seconds"] for r in runs]))}
    for m in MILESTONES:
      hit = [_tokens_to(r["curve"], m) for r in runs]
      row[f"tokens_to_{m}"] = None if None in hit else float(np.mean(hit))
    rows.append(row)
  print()
  print_table(rows, ["estimator", "W", "L", "L_min", "L_max", "tokens", "seconds",
                     *(f"tokens_to_{m}" for m in MILESTONES)])
  print("\n# the paper's claim (Figures 10 and 16): NRES reaches longer L than PES, and truncated "
        "ES and truncated backprop plateau at what their W can span")
  emit_json({"benchmark": "copy_task", "config": {k: v for k, v in vars(args).items()},
             "table": rows, "curves": {f"{r['estimator']}_W{r['W']}_seed{r['seed']}": r["curve"]
                                       for r in results}})


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
