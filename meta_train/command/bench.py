"""``meta-train bench``: an optimizer on the held-out suite against tuned hand-designed ones.

For each task of :data:`tasks.heldout.SUITE` and each seed (``--seeds K``: seeds ``0..K-1``, each
its own initialization and data order) the optimizer under test trains the task once, told the
task's length (``num_steps``), and each baseline family trains it at every learning rate of a
log-spaced grid (7 points, half a decade apart; a grid whose best point sits on an edge is
extended past it by two more points, until it does not or the rate leaves [1e-7, 10]), on the
same initialization and batches. The families (:data:`BASELINES`): Adam at a constant rate,
Adam with linear warmup (the first 5% of the steps) and cosine decay to 0 (``adam_wc``), AdamW
(weight decay 1e-4) and SGD with momentum 0.9. Each run's losses are measured
on fixed batches (1000 examples drawn once) at 50 points of its run: the training loss on the
train split and, at the end, the validation loss on the test split. A run's final training loss
is the mean of its last 5 points (the last tenth of the run: one noisy point does not pick a
learning rate). Reported per task:

* the final training and validation loss of the optimizer and of each baseline at its best
  learning rate (best: the lowest final training loss; a diverged run, non-finite or above twice
  its initial loss, is never best);
* ``vs_adam``: the optimizer's final training loss over tuned Adam's;
* ``steps_to_adam``: the steps the optimizer needs to reach tuned Adam's final training loss
  (VeLO's measure; ``None`` when it never does) and ``speedup``, the task's steps over that;
* whether the optimizer diverged.

Across the suite, per seed: the geometric mean of ``vs_adam`` (and of the ratio to tuned
``adam_wc``), and "one rate for the whole suite" rows for ``adam`` and ``adam_wc``: the rate of
the 7-point base grid whose runs have the lowest geometric mean over the tasks of their final
loss over tuned Adam's (what a user who does not tune gets at best), with the optimizer's
geometric mean over those runs (``vs_one_rate``). Over seeds: the mean of each per-seed geometric
mean and its spread (min, max). A table, a JSON line and (with ``--out``) the loss curves of seed
0 as a PNG. Every run of one optimizer family on one task is one compiled program, vmapped over
the learning rates.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lopt_meta
from lopt_meta.errors import ConfigError
from tasks import heldout
from tasks.inner_task import InnerTask
from tasks.inner_training import inner_training

POINTS = 50
FINAL_POINTS = 5  # the final loss: the mean of the last 5 points (the last tenth of the run)
FIXED_BATCH = 1000
WARMUP = 0.05  # adam_wc: linear warmup over the first 5% of the steps, then cosine decay to 0


def warmup_cosine(lr, steps: int) -> optax.Schedule:
  """``adam_wc``'s schedule: 0 -> ``lr`` linearly over ``WARMUP * steps`` steps, then a cosine
  to 0 at ``steps`` (``optax.warmup_cosine_decay_schedule(0, lr, warmup, steps)``'s values,
  written here so that ``lr`` may be traced: the bench vmaps over it)."""
  warmup = max(1, int(WARMUP * steps))

  def schedule(count):
    count = jnp.asarray(count, jnp.float32)
    frac = jnp.clip((count - warmup) / max(1, steps - warmup), 0.0, 1.0)
    return jnp.where(count < warmup, lr * count / warmup,
                     lr * 0.5 * (1.0 + jnp.cos(jnp.pi * frac)))
  return schedule


BASELINES: dict[str, Callable[[Any, int], optax.GradientTransformation]] = {
    "adam": lambda lr, steps: optax.adam(lr),
    "adam_wc": lambda lr, steps: optax.adam(warmup_cosine(lr, steps)),
    "adamw": lambda lr, steps: optax.adamw(lr, weight_decay=1e-4),
    "sgdm": lambda lr, steps: optax.sgd(lr, momentum=0.9),
}
"""The hand-designed families, each ``(learning rate, run length) -> optax transformation``."""
GRIDS = {"adam": (-4.0, -1.0), "adam_wc": (-4.0, -1.0), "adamw": (-4.0, -1.0),
         "sgdm": (-3.0, 0.0)}  # log10 ends of the base grids
ONE_RATE = ("adam", "adam_wc")  # the families with a "one rate for the whole suite" row
LIMITS = (-7.0, 1.0)


class _OptaxAtRate:
  """An optax family as inner training's optimizer, the learning rate as its argument (the
  state of these families does not depend on the rate). ``steps``: the run's length (the
  schedule's; :func:`bench_task` sets it to the task's length where it is ``None``)."""

  def __init__(self, make: Callable[..., optax.GradientTransformation], steps: int | None = None):
    self.make = make
    self.steps = steps

  def _tx(self, lr, steps):
    return self.make(lr, steps)

  def init(self, params, *, num_steps=None):
    del num_steps
    return self._tx(1.0, self.steps).init(params)

  def update(self, lr, grads, opt_state, params, *, loss=None):
    del loss
    return self._tx(lr, self.steps).update(grads, opt_state, params)


@dataclasses.dataclass
class Runs:
  """Runs of one optimizer on one task: ``curves [runs, POINTS]`` (training loss on the fixed
  batch after each of the ``POINTS`` equal parts), ``initial [runs]``, ``valid [runs]`` (the
  final validation loss) and the step of each point (``steps [POINTS]``)."""
  curves: np.ndarray
  initial: np.ndarray
  valid: np.ndarray
  steps: np.ndarray

  @property
  def final(self) -> np.ndarray:
    """``[runs]``: the mean training loss over the last tenth of the run."""
    return self.curves[:, -FINAL_POINTS:].mean(axis=1)

  @property
  def diverged(self) -> np.ndarray:
    return ~np.isfinite(self.final) | (self.final > 2 * self.initial)


def train_runs(task: InnerTask, optimizer, args, steps: int, *, seed: int = 0) -> Runs:
  """Trains ``task`` ``steps`` steps with ``optimizer`` once per entry of ``args`` (its
  argument: learning rates, or a stacked theta), vmapped; every run starts from the same
  parameters and sees the same batches. The optimizer is told the run's length (``num_steps``)."""
  return compile_runs(task, optimizer, steps, seed=seed)(args)


def compile_runs(task: InnerTask, optimizer, steps: int, *,
                 seed: int = 0) -> Callable[[Any], Runs]:
  """:func:`train_runs` as a function of ``args`` alone, compiled once for every call with
  arguments of the same shapes (meta-validation calls it at every evaluation)."""
  init, step, _ = inner_training(task, optimizer, horizon=steps)
  every = max(1, steps // POINTS)
  points = steps // every
  data = (task.data,)
  key = jax.random.key(seed)
  fixed_key, init_key, steps_key = jax.random.split(key, 3)

  def fixed_loss(params, split, k):
    return task.loss(params, task.eval_batch(task.data, split, k, batch_size=FIXED_BATCH))

  def one(arg):
    state = init(init_key, data)

    def chunk(state, keys):
      state, _ = jax.lax.scan(lambda s, k: step(arg, s, k, data), state, keys)
      return state, fixed_loss(state.params, "train", fixed_key)
    keys = jax.random.split(steps_key, points * every).reshape(points, every)
    initial = fixed_loss(state.params, "train", fixed_key)
    state, curve = jax.lax.scan(chunk, state, keys)
    return curve, initial, fixed_loss(state.params, "test", fixed_key)

  compiled = jax.jit(jax.vmap(one))

  def run(args) -> Runs:
    if jax.tree.leaves(args):
      curves, initial, valid = compiled(args)
    else:  # nothing to batch (a theta with no leaves): one run
      curves, initial, valid = jax.jit(jax.vmap(lambda _: one(args)))(jnp.zeros(1))
    return Runs(curves=np.asarray(curves), initial=np.asarray(initial), valid=np.asarray(valid),
                steps=(np.arange(1, points + 1) * every))
  return run


def _grid(low: float, high: float) -> np.ndarray:
  return 10.0 ** np.arange(low, high + 1e-9, 0.5)


def tune(task: InnerTask, family: str, steps: int, *, seed: int = 0) -> dict[str, Any]:
  """The family's runs over its grid (extended past an edge that holds the best), and the best."""
  make = _OptaxAtRate(BASELINES[family], steps)
  rates = _grid(*GRIDS[family])
  runs = train_runs(task, make, jnp.asarray(rates, jnp.float32), steps, seed=seed)
  while True:
    score = np.where(runs.diverged, np.inf, runs.final)
    best = int(np.argmin(score))
    edge = -1 if best == 0 else (1 if best == len(rates) - 1 else 0)
    log_best = math.log10(rates[best])
    if edge == 0 or not np.isfinite(score[best]) or not (
        LIMITS[0] < log_best + 0.5 * edge < LIMITS[1]):
      break
    more = np.array([10.0 ** (log_best + 0.5 * edge), 10.0 ** (log_best + edge)])
    extra = train_runs(task, make, jnp.asarray(more, jnp.float32), steps, seed=seed)
    order = np.argsort(np.concatenate([rates, more]))
    rates = np.concatenate([rates, more])[order]
    runs = Runs(curves=np.concatenate([runs.curves, extra.curves])[order],
                initial=np.concatenate([runs.initial, extra.initial])[order],
                valid=np.concatenate([runs.valid, extra.valid])[order], steps=runs.steps)
  return {"rates": rates, "runs": runs, "best": best}


def resolve_optimizer(spec: str) -> tuple[str, Any, Any]:
  """``(label, optimizer, arg)`` for ``spec``: a ``.npz`` exported by ``meta-train export``, a
  pretrained name (:data:`lopt_meta.PRETRAINED`), or an optax family by name, optionally with its
  learning rate (``adam``, ``adamw:3e-3``, ``sgdm:0.1``; default 1e-3)."""
  if spec.endswith(".npz"):
    lopt, theta, _ = lopt_meta.read_optimizer(spec)
    return Path(spec).stem, lopt, theta
  if spec in lopt_meta.PRETRAINED:
    lopt, theta, _ = lopt_meta.read_pretrained(spec)
    return spec, lopt, theta
  family, _, rate = spec.partition(":")
  if family in BASELINES:
    try:
      lr = float(rate) if rate else 1e-3
    except ValueError:
      raise ConfigError("optimizer", f"{spec!r}: the learning rate after ':' must be a number")
    return f"{family} lr {lr:g}", _OptaxAtRate(BASELINES[family]), jnp.float32(lr)
  raise ConfigError("optimizer", f"{spec!r} is not a .npz file, a pretrained optimizer "
                    f"({', '.join(sorted(lopt_meta.PRETRAINED))}) or an optax family "
                    f"({', '.join(BASELINES)}, optionally NAME:LR)")


def tuned_baselines(held: heldout.HeldOutTask, task: InnerTask, *,
                    seed: int = 0) -> dict[str, Any]:
  """Every family of :data:`BASELINES` tuned on one task and seed: ``{family: {lr, train, valid,
  grid, diverged}}`` and ``curves`` (each family's best run)."""
  out: dict[str, Any] = {"curves": {}}
  for family in BASELINES:
    tuned = tune(task, family, held.steps, seed=seed)
    runs, best = tuned["runs"], tuned["best"]
    out[family] = {"lr": float(tuned["rates"][best]), "train": float(runs.final[best]),
                   "valid": float(runs.valid[best]),
                   "grid": {f"{r:.3g}": float(f) for r, f in zip(tuned["rates"], runs.final)},
                   "diverged": {f"{r:.3g}": bool(d) for r, d in zip(tuned["rates"],
                                                                     runs.diverged)}}
    out["curves"][f"{family} lr {tuned['rates'][best]:.2g}"] = (runs.steps, runs.curves[best])
  return out


def bench_task(held: heldout.HeldOutTask, optimizer, arg, *, data_dir: str | None = None,
               seed: int = 0, cache: dict | None = None) -> dict[str, Any]:
  """One task's row (see the module docstring), with the curves for the figure. ``cache``: a
  dict that keeps the tuned baselines per (task, length, seed) across calls (benching several
  optimizers against the same baselines tunes them once)."""
  task = held.build(data_dir)
  if isinstance(optimizer, _OptaxAtRate) and optimizer.steps is None:
    optimizer = _OptaxAtRate(optimizer.make, held.steps)  # a schedule runs over the task
  start = time.perf_counter()
  stacked = jax.tree.map(lambda x: jnp.asarray(x)[None], arg)
  mine = train_runs(task, optimizer, stacked, held.steps, seed=seed)
  row: dict[str, Any] = {"task": held.name, "steps": held.steps,
                         "train": float(mine.final[0]), "valid": float(mine.valid[0]),
                         "diverged": bool(mine.diverged[0])}
  key = (held.name, held.steps, seed)
  if cache is not None and key in cache:
    baselines = cache[key]
  else:
    baselines = tuned_baselines(held, task, seed=seed)
    if cache is not None:
      cache[key] = baselines
  row.update({family: baselines[family] for family in BASELINES})
  curves = {"optimizer": (mine.steps, mine.curves[0]), **baselines["curves"]}
  row["initial"] = float(mine.initial[0])
  adam = row["adam"]["train"]
  row["vs_adam"] = row["train"] / adam if adam > 0 else math.nan
  row["vs_adam_wc"] = row["train"] / row["adam_wc"]["train"] if row["adam_wc"]["train"] > 0 else (
      math.nan)
  reached = np.nonzero(mine.curves[0] <= adam)[0]
  row["steps_to_adam"] = int(mine.steps[reached[0]]) if len(reached) else None
  row["speedup"] = held.steps / row["steps_to_adam"] if row["steps_to_adam"] else None
  row["seconds"] = time.perf_counter() - start
  row["curves"] = {k: {"step": s.tolist(), "loss": c.tolist()} for k, (s, c) in curves.items()}
  return row


def read_baselines(path: str | None) -> dict:
  """The tuned baselines stored at ``path`` (:func:`write_baselines`), keyed as
  :func:`bench_task`'s cache (``{}`` where there is no file)."""
  if path is None or not Path(path).is_file():
    return {}
  cache = {}
  for entry in json.loads(Path(path).read_text()):
    value = entry["baselines"]
    value["curves"] = {k: (np.asarray(v[0]), np.asarray(v[1])) for k, v in value["curves"].items()}
    cache[(entry["task"], entry["steps"], entry["seed"])] = value
  return cache


def write_baselines(path: str | None, cache: dict) -> None:
  """Stores :func:`bench_task`'s cache of tuned baselines as JSON at ``path`` (atomically)."""
  if path is None:
    return
  entries = [{"task": task, "steps": steps, "seed": seed,
              "baselines": {**value, "curves": {k: [np.asarray(a).tolist(), np.asarray(b).tolist()]
                                                for k, (a, b) in value["curves"].items()}}}
             for (task, steps, seed), value in cache.items()]
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(str(path) + ".partial")
  tmp.write_text(json.dumps(entries))
  os.replace(tmp, path)


def _geomean(values) -> float:
  values = list(values)
  if not values or not all(v > 0 and math.isfinite(v) for v in values):
    return math.nan
  return float(np.exp(np.mean(np.log(values))))


def one_rate(rows: Sequence[dict[str, Any]], family: str) -> dict[str, Any]:
  """The ``family``'s single best rate for the whole suite (one seed's rows): among its base
  grid's rates, the one whose runs have the lowest geometric mean over tasks of their final loss
  over tuned Adam's (a diverged run counts its initial loss: no progress); that geometric mean
  (``vs_adam``), the rate and each task's final loss at it."""
  best = None
  for rate in _grid(*GRIDS[family]):
    key = f"{rate:.3g}"
    finals = [r["initial"] if r[family]["diverged"][key] else r[family]["grid"][key] for r in rows]
    score = _geomean(f / r["adam"]["train"] for f, r in zip(finals, rows))
    if best is None or score < best["vs_adam"]:
      best = {"lr": float(rate), "vs_adam": score, "train": dict(zip(
          (r["task"] for r in rows), finals))}
  return best


def summary(rows: Sequence[dict[str, Any]], label: str) -> dict[str, Any]:
  """One seed's suite: geometric means over tasks (the optimizer over tuned Adam, over tuned
  ``adam_wc``, and over each one-rate row's runs), divergences, the tasks where it reaches tuned
  Adam, and the time."""
  out = {"optimizer": label, "tasks": len(rows),
         "vs_adam_geomean": _geomean(r["vs_adam"] for r in rows),
         "vs_adam_wc_geomean": _geomean(r["vs_adam_wc"] for r in rows),
         "diverged": sum(r["diverged"] for r in rows),
         "reached_adam": sum(r["steps_to_adam"] is not None for r in rows),
         "seconds": sum(r["seconds"] for r in rows)}
  for family in ONE_RATE:
    best = one_rate(rows, family)
    out[f"{family}_one_rate"] = best
    out[f"vs_{family}_one_rate_geomean"] = _geomean(
        r["train"] / best["train"][r["task"]] for r in rows)
  return out


SPREAD_KEYS = ("vs_adam_geomean", "vs_adam_wc_geomean", "vs_adam_one_rate_geomean",
               "vs_adam_wc_one_rate_geomean")


def over_seeds(per_seed: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Across seeds' summaries: each geometric mean's mean over seeds and its (min, max)."""
  out: dict[str, Any] = {"seeds": len(per_seed),
                         "diverged": sum(s["diverged"] for s in per_seed),
                         "seconds": sum(s["seconds"] for s in per_seed)}
  for key in SPREAD_KEYS:
    values = [s[key] for s in per_seed]
    out[key] = float(np.mean(values))
    out[f"{key}_spread"] = [float(np.min(values)), float(np.max(values))]
  for family in ONE_RATE:
    out[f"{family}_one_rate_vs_adam"] = float(np.mean([s[f"{family}_one_rate"]["vs_adam"]
                                                      for s in per_seed]))
    out[f"{family}_one_rate_lr"] = [s[f"{family}_one_rate"]["lr"] for s in per_seed]
  return out


def table(rows: Sequence[dict[str, Any]], label: str) -> str:
  """One line per row (task, or task and seed): final losses at each family's tuned rate."""
  head = (f"{'task':30s} {'seed':>4s} {'steps':>6s} {label[:14]:>14s} {'valid':>8s} "
          f"{'Adam (lr)':>17s} {'Adam w+cos (lr)':>17s} {'AdamW (lr)':>17s} {'SGDm (lr)':>17s} "
          f"{'vs Adam':>8s} {'vs w+cos':>8s} {'to Adam':>8s}")
  lines = [head, "-" * len(head)]
  for r in rows:
    def best(f):
      return f"{r[f]['train']:.4f} ({r[f]['lr']:.0e})"
    lines.append(
        f"{r['task']:30s} {r.get('seed', 0):4d} {r['steps']:6d} "
        f"{r['train']:14.4f}{'!' if r['diverged'] else ' '}"
        f"{r['valid']:8.4f} {best('adam'):>17s} {best('adam_wc'):>17s} {best('adamw'):>17s} "
        f"{best('sgdm'):>17s} {r['vs_adam']:8.3f} {r['vs_adam_wc']:8.3f} "
        f"{str(r['steps_to_adam'] or '-'):>8s}")
  return "\n".join(lines)


def summary_table(per_seed: Sequence[dict[str, Any]], label: str) -> str:
  """Per seed and over seeds: the optimizer's geometric means against each baseline."""
  cols = [("vs_adam_geomean", "tuned Adam"), ("vs_adam_wc_geomean", "tuned Adam w+cos"),
          ("vs_adam_one_rate_geomean", "Adam, one rate"),
          ("vs_adam_wc_one_rate_geomean", "w+cos, one rate")]
  head = f"{label[:20]:20s} " + " ".join(f"{name:>17s}" for _, name in cols) + " diverged"
  lines = [head, "-" * len(head)]
  for i, s in enumerate(per_seed):
    lines.append(f"{'seed ' + str(i):20s} " + " ".join(f"{s[k]:17.3f}" for k, _ in cols)
                 + f" {s['diverged']:8d}")
  if len(per_seed) > 1:
    agg = over_seeds(per_seed)
    lines.append(f"{'mean [min, max]':20s} " + " ".join(
        f"{agg[k]:5.3f} [{agg[k + '_spread'][0]:.2f},{agg[k + '_spread'][1]:.2f}]".rjust(17)
        for k, _ in cols) + f" {agg['diverged']:8d}")
  for family in ONE_RATE:
    rates = ", ".join(f"{s[family + '_one_rate']['lr']:.0e} ({s[family + '_one_rate']['vs_adam']:.3f}x)"
                      for s in per_seed)
    lines.append(f"one rate for the suite, {family}: {rates} (per seed: rate, x tuned Adam)")
  return "\n".join(lines)


def run_bench(suite: Sequence[heldout.HeldOutTask], optimizer, arg, label: str, *,
              seeds: int = 1, data_dir: str | None = None, log=None,
              cache: dict | None = None) -> dict[str, Any]:
  """The whole bench: every task for seeds ``0..seeds-1``; ``{"rows", "per_seed", "summary"}``
  (``summary``: :func:`over_seeds`, with the optimizer's label). ``log(row)`` is called after
  each row; ``cache``: see :func:`bench_task`."""
  rows, per_seed = [], []
  for seed in range(seeds):
    seed_rows = []
    for held in suite:
      row = bench_task(held, optimizer, arg, data_dir=data_dir, seed=seed, cache=cache)
      row["seed"] = seed
      seed_rows.append(row)
      if log is not None:
        log(row)
    rows += seed_rows
    per_seed.append(summary(seed_rows, label))
  return {"rows": rows, "per_seed": per_seed,
          "summary": {"optimizer": label, "tasks": len(suite), **over_seeds(per_seed)}}


def plot(rows: Sequence[dict[str, Any]], label: str, out: Path) -> Path:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 3.4), squeeze=False)
  for ax, r in zip(axes[0], rows):
    for name, curve in r["curves"].items():
      ax.plot(curve["step"], curve["loss"], label=label if name == "optimizer" else name,
              lw=2.0 if name == "optimizer" else 1.0)
    ax.set_title(r["task"], fontsize=9)
    ax.set_xlabel("inner step")
    ax.set_yscale("log")
  axes[0][0].set_ylabel("training loss (fixed batch)")
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out
