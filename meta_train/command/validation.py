"""Meta-validation: theta judged, while it meta-trains, on tasks it never trains on.

Every ``heldout_every`` outer steps a run trains each task of :data:`tasks.heldout.VALIDATION`
once with its learned optimizer at the current theta (seed 0; the task's length is passed as
``num_steps``) and scores it as ``meta-train bench`` does (:func:`meta_train.command.bench.
train_runs`: the mean training loss on a fixed batch over the last tenth of the run) against Adam
tuned for that task on the bench's learning-rate grid (computed once per session, on the same
initialization and batches)::

    eval_heldout/NAME = final loss(theta) / final loss(tuned Adam)
    eval_heldout      = geometric mean over the tasks

A run that diverged (a non-finite loss, or above twice its initial loss) scores its initial loss:
no progress, a finite ratio (``eval_heldout_diverged`` counts them). The session keeps the theta
with the lowest ``eval_heldout`` so far as ``RUN/best.npz`` (:func:`lopt_meta.save_optimizer`'s
format, its metadata naming the step): the checkpoint chosen by meta-validation, not by the last
step or the lowest meta-loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from meta_train.command import bench
from tasks import heldout

BEST_FILE = "best.npz"


class HeldOutValidator:
  """Scores theta on held-out tasks (see the module docstring).

  Args:
    lopt: the learned optimizer being meta-trained.
    tasks: the validation tasks (default :data:`tasks.heldout.VALIDATION`).
    data_dir: where FashionMNIST is, if not in the default places.
  """

  def __init__(self, lopt, tasks: Sequence[heldout.HeldOutTask] | None = None, *,
               data_dir: str | None = None):
    self.lopt = lopt
    self.tasks = tuple(heldout.VALIDATION if tasks is None else tasks)
    self.data_dir = data_dir
    self._runs: dict[str, Any] | None = None
    self._adam: dict[str, float] | None = None

  def baseline(self) -> dict[str, float]:
    """``heldout_adam/NAME``: tuned Adam's final training loss on each task (once)."""
    if self._adam is None:
      built = {t.name: t.build(self.data_dir) for t in self.tasks}
      self._runs = {t.name: bench.compile_runs(built[t.name], self.lopt, t.steps)
                    for t in self.tasks}
      self._adam = {}
      for t in self.tasks:
        tuned = bench.tune(built[t.name], "adam", t.steps)
        self._adam[t.name] = float(tuned["runs"].final[tuned["best"]])
    return {f"heldout_adam/{name}": loss for name, loss in self._adam.items()}

  def __call__(self, theta) -> dict[str, Any]:
    """``eval_heldout``, ``eval_heldout/NAME`` and ``eval_heldout_diverged`` at ``theta``."""
    self.baseline()
    stacked = jax.tree.map(lambda x: jnp.asarray(x)[None], theta)
    out: dict[str, Any] = {}
    diverged = 0
    for t in self.tasks:
      runs = self._runs[t.name](stacked)
      bad = bool(runs.diverged[0])
      diverged += bad
      score = float(runs.initial[0] if bad else runs.final[0])
      out[f"eval_heldout/{t.name}"] = score / self._adam[t.name]
    ratios = [out[f"eval_heldout/{t.name}"] for t in self.tasks]
    out["eval_heldout"] = (float(np.exp(np.mean(np.log(ratios)))) if all(r > 0 for r in ratios)
                           else math.nan)
    out["eval_heldout_diverged"] = diverged
    return out
