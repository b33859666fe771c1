"""Figures of one or more runs, from their ``metrics.jsonl``.

Four panels: the meta-loss against outer steps, against wall time and against inner (trajectory)
steps, and the last evaluation's per-step loss curve of each run beside its baseline (Adam's best
learning rate, for learned optimizers).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lopt_meta.errors import ConfigError
from meta_train.logs import read_metrics


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
  """Draws the runs in ``run_dirs`` to the PNG ``out``; returns its path.

  Raises:
    ConfigError: a folder is not a run folder or has no metrics yet.
  """
  import matplotlib
  matplotlib.use("Agg")  # no screen needed
  import matplotlib.pyplot as plt

  runs = []
  for run_dir in run_dirs:
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
      raise ConfigError("run_dir", f"{run_dir} is not a run folder (no config.json)")
    records = read_metrics(run_dir)
    if not any("meta_loss" in r for r in records):
      raise ConfigError("run_dir", f"{run_dir} has no logged meta-loss yet")
    runs.append((run_dir.name, records))

  fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
  panels = [(axes[0, 0], "step", "outer step"), (axes[0, 1], "time_s", "wall time (s)"),
            (axes[1, 0], "total_unroll_steps", "inner steps (all particles)")]
  for ax, key, label in panels:
    for name, records in runs:
      points = [(r[key], r["meta_loss"]) for r in records if "meta_loss" in r and key in r]
      if points:
        ax.plot(*zip(*points), label=name)
    ax.set_xlabel(label)
    ax.set_ylabel("meta-loss (window mean)")
    ax.grid(alpha=0.3)
  axes[0, 0].legend(fontsize="small")

  ax = axes[1, 1]
  drew = False
  for name, records in runs:
    evals = [r for r in records if "eval_curve" in r]
    if evals:
      last = evals[-1]
      line, = ax.plot(last["eval_curve"]["step"], last["eval_curve"]["loss"],
                      label=f"{name} (outer step {last['step']})")
      drew = True
      baseline = next((r for r in records if "adam_curve" in r), None)
      if baseline is not None:
        ax.plot(baseline["adam_curve"]["step"], baseline["adam_curve"]["loss"], "--",
                color=line.get_color(), label=f"{name}: Adam lr {baseline['adam_lr']:g}")
  ax.set_xlabel("inner step")
  ax.set_ylabel("evaluation loss (mean over episodes)")
  ax.set_title("evaluation: learned optimizer vs baseline" if drew else "no evaluation logged")
  ax.grid(alpha=0.3)
  if drew:
    ax.legend(fontsize="small")
  fig.tight_layout()
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out
