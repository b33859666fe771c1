"""Figures of hyperparameter optimization: best objective so far against compute, and the
landscape of a two-hyperparameter task with each run's theta trajectory (ES-Single paper,
Figures 7 to 9).

* Best so far: for an estimator run, the running minimum of its evaluations (``eval_loss``: the
  mean per-step meta-loss of fresh full inner runs at theta) against ``total_unroll_steps`` (inner
  steps of every particle, burn-in included; the evaluations' own runs are not counted); for a
  random search (:func:`tasks.hpo.search.write_random`), the running minimum over its trials
  against the inner steps they spent. Runs whose folder names differ only in ``-seed<N>`` form one
  group, drawn as the mean over seeds with a min/max band, each curve held constant between its
  records and the group cut at its shortest run.
* Landscape: a grid (:func:`tasks.hpo.search.write_grid`) as a heatmap, with each run's logged
  theta on top (from ``metrics.jsonl``; theta is logged when it has at most 32 numbers). Axes of
  log-scale hyperparameters are shown as ``log10`` of the hyperparameter.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lopt_meta.errors import ConfigError
from meta_train.command.errors import CheckpointError
from meta_train.command.logs import read_metrics
from meta_train.command.plots import save_figure
from tasks.hpo import search


def best_so_far(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
  """``(compute, best)`` of a run or random-search folder: inner steps and the lowest
  evaluation so far, one entry per evaluation (see the module docstring)."""
  records = read_metrics(Path(run_dir))
  points = [(r["total_unroll_steps"], r["eval_loss"]) for r in records
            if "eval_loss" in r and "total_unroll_steps" in r]
  if not points:
    raise ConfigError("run_dir", f"{run_dir} has no evaluations logged (eval_loss)")
  compute, loss = np.asarray(points, dtype=float).T
  return compute, np.minimum.accumulate(np.where(np.isfinite(loss), loss, np.inf))


def group_name(run_dir: str | Path) -> str:
  """The folder name without its ``-seed<N>`` part: the runs of one method."""
  return re.sub(r"-seed\d+", "", Path(run_dir).name)


def _band(curves: list[tuple[np.ndarray, np.ndarray]]):
  """Mean, min and max over step curves on the union of their x values (up to the shortest)."""
  end = min(x[-1] for x, _ in curves)
  xs = np.unique(np.concatenate([x[x <= end] for x, _ in curves]))
  xs = xs[xs >= max(x[0] for x, _ in curves)]
  ys = np.stack([y[np.searchsorted(x, xs, side="right") - 1] for x, y in curves])
  return xs, ys.mean(0), ys.min(0), ys.max(0)


def draw_best_so_far(ax, run_dirs: Sequence[str | Path]) -> dict[str, dict[str, float]]:
  """Draws each group's best-so-far band on ``ax``; returns ``{group: {"compute", "mean",
  "min", "max"}}`` at the group's last common compute."""
  groups: dict[str, list] = {}
  for run_dir in run_dirs:
    groups.setdefault(group_name(run_dir), []).append(best_so_far(run_dir))
  summary = {}
  for name, curves in groups.items():
    xs, mean, low, high = _band(curves)
    line, = ax.step(xs, mean, where="post", label=f"{name} ({len(curves)} run(s))")
    if len(curves) > 1:
      ax.fill_between(xs, low, high, step="post", color=line.get_color(), alpha=0.2)
    summary[name] = {"compute": float(xs[-1]), "mean": float(mean[-1]), "min": float(low[-1]),
                     "max": float(high[-1])}
  ax.set_xlabel("total compute (inner steps x particles or trials)")
  ax.set_ylabel("best meta-objective so far")
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  return summary


def _axis(kinds: dict[str, str], name: str):
  """``(scale, label)`` for a hyperparameter axis: log10 for log-scale ones."""
  if kinds.get(name) == "LogUniform":
    return 1 / math.log(10), f"log10 {name}"
  return 1.0, f"{name} (unconstrained)"


def draw_landscape(ax, grid: search.GridResult, run_dirs: Sequence[str | Path],
                   kinds: dict[str, str] | None = None) -> None:
  """The grid's objective as a heatmap with each run's theta trajectory (start: circle, end:
  star). ``kinds``: ``{name: transform class name}`` (log-scale axes are drawn as log10)."""
  if len(grid.axes) != 2:
    raise ConfigError("landscape", f"a landscape needs a grid over two hyperparameters; got "
                      f"{list(grid.axes)}")
  (nx, x), (ny, y) = grid.axes.items()
  sx, label_x = _axis(kinds or {}, nx)
  sy, label_y = _axis(kinds or {}, ny)
  mesh = ax.pcolormesh(x * sx, y * sy, grid.objective.T, shading="nearest", cmap="viridis")
  ax.figure.colorbar(mesh, ax=ax, label="meta-objective (grid)")
  i, j = np.unravel_index(int(np.nanargmin(grid.objective)), grid.objective.shape)
  ax.plot(x[i] * sx, y[j] * sy, "w+", markersize=14, markeredgewidth=2, label="grid optimum")
  for run_dir in run_dirs:
    thetas = [r["theta"] for r in read_metrics(Path(run_dir)) if "theta" in r
              and nx in r["theta"] and ny in r["theta"] and "trial" not in r]
    if thetas:
      px = np.asarray([t[nx] for t in thetas]) * sx
      py = np.asarray([t[ny] for t in thetas]) * sy
      line, = ax.plot(px, py, linewidth=1.2, label=Path(run_dir).name)
      ax.plot(px[0], py[0], "o", color=line.get_color())
      ax.plot(px[-1], py[-1], "*", color=line.get_color(), markersize=12)
  ax.set_xlabel(label_x)
  ax.set_ylabel(label_y)
  ax.legend(fontsize="x-small", loc="best")


def plot_hpo(run_dirs: Sequence[str | Path], out: str | Path,
             landscape: str | Path | None = None) -> Path:
  """Best so far against compute for ``run_dirs`` (runs and random searches), and beside it the
  landscape of the grid file ``landscape`` with the runs' trajectories; a PNG at ``out``."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  for run_dir in run_dirs:
    if not (Path(run_dir) / "metrics.jsonl").is_file():
      raise ConfigError("run_dir", f"{run_dir} is not a run or search folder (no metrics.jsonl)")
  grid = search.read_grid(landscape) if landscape is not None else None
  fig, axes = plt.subplots(1, 2 if grid is not None else 1,
                           figsize=(13 if grid is not None else 7, 5.5), squeeze=False)
  draw_best_so_far(axes[0, 0], run_dirs)
  if grid is not None:
    draw_landscape(axes[0, 1], grid, [d for d in run_dirs if not search.read_search(d)],
                   kinds=_kinds(run_dirs))
  return save_figure(fig, out)


def _kinds(run_dirs) -> dict[str, str]:
  """``{name: transform class name}`` from the first run whose task declares hyperparameters:
  the space its checkpoints record (runs saved before 2026-12-07: its task's system, built)."""
  from meta_train.command import build as build_lib
  from meta_train.command import run as run_lib
  for run_dir in run_dirs:
    if search.read_search(run_dir) or not (Path(run_dir) / "config.json").is_file():
      continue
    try:
      recorded = run_lib.load_run(Path(run_dir)).meta.get("hyperparameters")
      if recorded is not None:
        return {name: t["kind"] for name, t in recorded["space"].items()}
      system = build_lib.build_system(run_lib.read_config(Path(run_dir)))
    except (ConfigError, CheckpointError, json.JSONDecodeError):
      continue
    if system.space is not None:
      return {name: type(t).__name__ for name, t in system.space.items()}
  return {}


def is_hpo(run_dir: str | Path) -> bool:
  """Whether a folder is a random search or a run of a registered hyperparameter task."""
  if search.read_search(run_dir):
    return True
  try:
    config = json.loads((Path(run_dir) / "config.json").read_text())
    from tasks.hpo import paper_tasks as hparam_tuning
    return config["task"]["task"] in hparam_tuning.REGISTERED
  except (OSError, KeyError, TypeError, json.JSONDecodeError):
    return False
