"""``meta-train bench``: an optimizer on the held-out suite against tuned hand-designed ones.

For each task of :data:`tasks.heldout.SUITE` the optimizer under test trains the task once
(seed 0: the same initialization and data order as every baseline run), and Adam, AdamW (weight
decay 1e-4) and SGD with momentum 0.9 each train it at every learning rate of a log-spaced grid
(7 points, half a decade apart; a grid whose best point sits on an edge is extended past it by
two more points, until it does not or the rate leaves [1e-7, 10]). Each run's losses are measured
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

Across the suite: the geometric mean of ``vs_adam``. A table, a JSON line and (with ``--out``)
the loss curves as a PNG. Every run of one optimizer family on one task is one compiled program,
vmapped over the learning rates.
"""

from __future__ import annotations

import dataclasses
import math
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
from tasks.inner import InnerTask
from tasks.inner_training import inner_training

POINTS = 50
FINAL_POINTS = 5  # the final loss: the mean of the last 5 points (the last tenth of the run)
FIXED_BATCH = 1000
BASELINES: dict[str, Callable[[Any], optax.GradientTransformation]] = {
    "adam": optax.adam,
    "adamw": lambda lr: optax.adamw(lr, weight_decay=1e-4),
    "sgdm": lambda lr: optax.sgd(lr, momentum=0.9),
}
GRIDS = {"adam": (-4.0, -1.0), "adamw": (-4.0, -1.0), "sgdm": (-3.0, 0.0)}  # log10 ends
LIMITS = (-7.0, 1.0)


class _OptaxAtRate:
  """An optax family as inner training's optimizer, the learning rate as its argument (the
  state of Adam, AdamW and SGD with momentum does not depend on the rate)."""

  def __init__(self, make: Callable[[Any], optax.GradientTransformation]):
    self.make = make

  def init(self, params, *, num_steps=None):
    del num_steps
    return self.make(1.0).init(params)

  def update(self, lr, grads, opt_state, params, *, loss=None):
    del loss
    return self.make(lr).update(grads, opt_state, params)


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
    curves, initial, valid = compiled(args)
    return Runs(curves=np.asarray(curves), initial=np.asarray(initial), valid=np.asarray(valid),
                steps=(np.arange(1, points + 1) * every))
  return run


def _grid(low: float, high: float) -> np.ndarray:
  return 10.0 ** np.arange(low, high + 1e-9, 0.5)


def tune(task: InnerTask, family: str, steps: int, *, seed: int = 0) -> dict[str, Any]:
  """The family's runs over its grid (extended past an edge that holds the best), and the best."""
  make = _OptaxAtRate(BASELINES[family])
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


def bench_task(held: heldout.HeldOutTask, optimizer, arg, *, data_dir: str | None = None,
               seed: int = 0) -> dict[str, Any]:
  """One task's row (see the module docstring), with the curves for the figure."""
  task = held.build(data_dir)
  start = time.perf_counter()
  stacked = jax.tree.map(lambda x: jnp.asarray(x)[None], arg)
  mine = train_runs(task, optimizer, stacked, held.steps, seed=seed)
  row: dict[str, Any] = {"task": held.name, "steps": held.steps,
                         "train": float(mine.final[0]), "valid": float(mine.valid[0]),
                         "diverged": bool(mine.diverged[0])}
  curves = {"optimizer": (mine.steps, mine.curves[0])}
  for family in BASELINES:
    tuned = tune(task, family, held.steps, seed=seed)
    runs, best = tuned["runs"], tuned["best"]
    row[family] = {"lr": float(tuned["rates"][best]), "train": float(runs.final[best]),
                   "valid": float(runs.valid[best]),
                   "grid": {f"{r:.3g}": float(f) for r, f in zip(tuned["rates"], runs.final)}}
    curves[f"{family} lr {tuned['rates'][best]:.2g}"] = (runs.steps, runs.curves[best])
  adam = row["adam"]["train"]
  row["vs_adam"] = row["train"] / adam if adam > 0 else math.nan
  reached = np.nonzero(mine.curves[0] <= adam)[0]
  row["steps_to_adam"] = int(mine.steps[reached[0]]) if len(reached) else None
  row["speedup"] = held.steps / row["steps_to_adam"] if row["steps_to_adam"] else None
  row["seconds"] = time.perf_counter() - start
  row["curves"] = {k: {"step": s.tolist(), "loss": c.tolist()} for k, (s, c) in curves.items()}
  return row


def summary(rows: Sequence[dict[str, Any]], label: str) -> dict[str, Any]:
  ratios = [r["vs_adam"] for r in rows]
  finite = [x for x in ratios if x > 0 and math.isfinite(x)]
  return {"optimizer": label, "tasks": len(rows),
          "vs_adam_geomean": float(np.exp(np.mean(np.log(finite)))) if len(finite) == len(
              ratios) else math.nan,
          "diverged": sum(r["diverged"] for r in rows),
          "reached_adam": sum(r["steps_to_adam"] is not None for r in rows),
          "seconds": sum(r["seconds"] for r in rows)}


def table(rows: Sequence[dict[str, Any]], label: str) -> str:
  head = (f"{'task':30s} {'steps':>6s} {label[:14]:>14s} {'valid':>8s} {'Adam (lr)':>17s} "
          f"{'AdamW (lr)':>17s} {'SGDm (lr)':>17s} {'vs Adam':>8s} {'to Adam':>8s}")
  lines = [head, "-" * len(head)]
  for r in rows:
    def best(f):
      return f"{r[f]['train']:.4f} ({r[f]['lr']:.0e})"
    lines.append(
        f"{r['task']:30s} {r['steps']:6d} {r['train']:14.4f}{'!' if r['diverged'] else ' '}"
        f"{r['valid']:8.4f} {best('adam'):>17s} {best('adamw'):>17s} {best('sgdm'):>17s} "
        f"{r['vs_adam']:8.3f} {str(r['steps_to_adam'] or '-'):>8s}")
  return "\n".join(lines)


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
