"""Figures of one or more runs, from their ``metrics.jsonl``.

Four panels: the meta-loss against outer steps, against wall time and against inner (trajectory)
steps, and the last evaluation's per-step loss curve of each run beside its baseline (Adam's best
learning rate, for learned optimizers). For policy learning two more: the evaluation's mean
episode return against environment steps and against wall time. For a run that meta-validates
(``--heldout-every``) two more: ``eval_heldout`` (the geometric mean over the held-out tasks of
the final loss over tuned Adam's, each task's ratio thin) against outer steps and wall time, the
kept best marked.

The logged meta-loss is a mean over a few windows of few particles, so it carries a periodic
component: step-unlocked workers pass through the phases of their episodes with period
``T / W`` outer steps. The raw records are drawn faintly, and over them a moving average over one
such period (or 1/50 of the run where the period is not known). Losses that are never negative
are drawn on a log scale.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lopt_meta.errors import ConfigError
from meta_train.command.logs import read_metrics


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
  """Draws the runs in ``run_dirs`` to the PNG ``out``; returns its path.

  Raises:
    ConfigError: a folder is not a run folder or has no metrics yet.
  """
  import matplotlib
  matplotlib.use("Agg")  # no screen needed
  import matplotlib.pyplot as plt

  runs = [_read_run(Path(run_dir)) for run_dir in run_dirs]
  returns = any("eval_return" in r for _, records, _ in runs for r in records)
  heldout = any("eval_heldout" in r for _, records, _ in runs for r in records)
  rows = 2 + returns + heldout
  fig, axes = plt.subplots(rows, 2, figsize=(12, 4.25 * rows))
  panels = [(axes[0, 0], "step", "outer step"), (axes[0, 1], "time_s", "wall time (s)"),
            (axes[1, 0], "total_unroll_steps", "inner steps (all particles)")]
  for ax, key, label in panels:
    values = []
    for name, records, k in runs:
      points = np.asarray([(r[key], r["meta_loss"]) for r in records
                           if "meta_loss" in r and key in r], dtype=float)
      if len(points):
        raw, = ax.plot(points[:, 0], points[:, 1], alpha=0.25, linewidth=0.8)
        smooth = _moving_average(points[:, 1], k)
        ax.plot(points[len(points) - len(smooth):, 0], smooth, color=raw.get_color(),
                label=name if k == 1 else f"{name} (mean of {k} records)")
        values.append(points[:, 1])
    _log_scale_if_positive(ax, values)
    ax.set_xlabel(label)
    ax.set_ylabel("meta-loss")
    ax.grid(alpha=0.3)
  axes[0, 0].legend(fontsize="small")

  _draw_evaluations(axes[1, 1], runs)
  if returns:
    _draw_returns(axes[2], runs)
  if heldout:
    _draw_heldout(axes[rows - 1], runs)
  return save_figure(fig, out)


def _draw_heldout(axes, runs) -> None:
  """Meta-validation against outer steps and wall time: each run's ``eval_heldout`` (its tasks'
  ratios thin and faint), the best one marked."""
  for ax, key, label in zip(axes, ("step", "time_s"), ("outer step", "wall time (s)")):
    for name, records, _ in runs:
      points = [r for r in records if "eval_heldout" in r and key in r]
      if not points:
        continue
      x = [r[key] for r in points]
      line, = ax.plot(x, [r["eval_heldout"] for r in points], marker=".", label=name)
      tasks = sorted({k for r in points for k in r if k.startswith("eval_heldout/")})
      for k in tasks:
        ax.plot(x, [r.get(k, np.nan) for r in points], color=line.get_color(), alpha=0.3,
                linewidth=0.7)
      best = min(points, key=lambda r: r["eval_heldout"])
      ax.plot([best[key]], [best["eval_heldout"]], "*", markersize=12, color=line.get_color())
    ax.axhline(1.0, color="gray", linestyle=":", linewidth=1.0)
    ax.set_xlabel(label)
    ax.set_ylabel("held-out final loss / tuned Adam's")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.set_title("meta-validation (geometric mean; tasks thin; * best)")
  axes[0].legend(fontsize="small")


def _read_run(run_dir: Path):
  """``(name, records, smoothing)`` of a run folder with a logged meta-loss."""
  if not (run_dir / "config.json").is_file():
    raise ConfigError("run_dir", f"{run_dir} is not a run folder (no config.json)")
  records = read_metrics(run_dir)
  if not any("meta_loss" in r for r in records):
    raise ConfigError("run_dir", f"{run_dir} has no logged meta-loss yet")
  return run_dir.name, records, _smoothing(run_dir, records)


def _draw_evaluations(ax, runs) -> None:
  """Each run's last evaluation curve, and its baseline's (Adam) dashed in the same colour."""
  drew = False
  values = []
  for name, records, _ in runs:
    evals = [r for r in records if "eval_curve" in r]
    if evals:
      last = evals[-1]
      line, = ax.plot(last["eval_curve"]["step"], last["eval_curve"]["loss"],
                      label=f"{name} (outer step {last['step']})")
      drew = True
      values.append(np.asarray(last["eval_curve"]["loss"], dtype=float))
      baseline = next((r for r in records if "adam_curve" in r), None)
      if baseline is not None:
        ax.plot(baseline["adam_curve"]["step"], baseline["adam_curve"]["loss"], "--",
                color=line.get_color(), label=f"{name}: Adam lr {baseline['adam_lr']:g}")
        values.append(np.asarray(baseline["adam_curve"]["loss"], dtype=float))
  _log_scale_if_positive(ax, values)
  ax.set_xlabel("inner step")
  ax.set_ylabel("evaluation loss (mean over episodes)")
  ax.set_title("evaluation: learned optimizer vs baseline" if drew else "no evaluation logged")
  ax.grid(alpha=0.3)
  if drew:
    ax.legend(fontsize="small")


def save_figure(fig, out: str | Path) -> Path:
  """Lays out ``fig``, writes it to the PNG ``out`` (making its folder) and closes it."""
  import matplotlib.pyplot as plt
  fig.tight_layout()
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def _draw_returns(axes, runs) -> None:
  """Policy learning: the evaluation's mean episode return against environment steps (every
  particle, burn-in included) and against wall time."""
  for ax, key, label in ((axes[0], "total_unroll_steps",
                          "environment steps (all particles, burn-in included)"),
                         (axes[1], "time_s", "wall time (s)")):
    for name, records, _ in runs:
      points = np.asarray([(r[key], r["eval_return"]) for r in records
                           if "eval_return" in r and key in r], dtype=float)
      if len(points):
        ax.plot(points[:, 0], points[:, 1], marker="o", markersize=3, label=name)
    ax.set_xlabel(label)
    ax.set_ylabel("evaluation return (mean over episodes)")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize="small")


def _smoothing(run_dir: Path, records) -> int:
  """Records per period T / W of the episode phases (see the module docstring)."""
  logged = sum("meta_loss" in r for r in records)
  try:
    config = json.loads((run_dir / "config.json").read_text())
    period = config["task"]["horizon"] / (config["estimator"]["unroll_length"]
                                           * config["run"]["log_every"])
    k = int(round(period)) if period >= 1 else 1
  except (KeyError, TypeError, ZeroDivisionError, json.JSONDecodeError):
    k = logged // 50
  return max(1, min(k, logged // 5))


def _moving_average(x: np.ndarray, k: int) -> np.ndarray:
  if k <= 1:
    return x
  return np.convolve(x, np.ones(k) / k, mode="valid")


def _log_scale_if_positive(ax, values) -> None:
  """Log scale when no value is negative (exact zeros, e.g. a fitted task's clipped loss, are left
  out of the drawing)."""
  if values and all(len(v) and np.all(np.isfinite(v)) and np.all(v >= 0) and np.any(v > 0)
                    for v in values):
    ax.set_yscale("log", nonpositive="mask")
