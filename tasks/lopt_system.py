"""Training an inner task with a learned optimizer, as an unrolled system over theta.

The system is inner training (:mod:`tasks.inner_training`, the core it shares with
hyperparameter tuning) with the learned optimizer as the optimizer and its meta-parameters as
theta: one system step is one inner training step, the state one particle's inner run
(:class:`~tasks.inner_training.InnerState`), and the per-step meta-loss one of
:data:`~tasks.inner_training.META_LOSSES` (``"train"``, ``"valid"``, ``"telescoping"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from lopt_meta.base import LearnedOptimizer
from tasks.base import UnrolledSystem
from tasks.inner_task import InnerTask
from tasks.inner_training import Augmentation, inner_training


def learned_optimizer_system(task: InnerTask | Sequence[InnerTask], lopt: LearnedOptimizer, *,
                             horizon: int = 1000, meta_loss: str = "train",
                             truncation: str = "constant", min_horizon: int | None = None,
                             fixed_batch_size: int = 1000, augment: Augmentation | None = None,
                             theta0: Any = None, name: str | None = None) -> UnrolledSystem:
  """The unrolled system whose theta is ``lopt``'s meta-parameters.

  Args:
    task: an inner task, or a family (sequence) of tasks whose parameters share one structure.
    lopt: the learned optimizer.
    horizon, meta_loss, truncation, min_horizon, fixed_batch_size, augment: as
      :func:`tasks.inner_training.inner_training`.
    theta0: initial meta-parameters (default ``lopt.init_theta(jax.random.key(0))``).
    name: the system's name (default ``"<task>[+<task>...]/<lopt>"``).
  """
  family = tuple(task) if isinstance(task, (list, tuple)) else (task,)
  init, step, min_horizon = inner_training(
      family, lopt, horizon=horizon, meta_loss=meta_loss, truncation=truncation,
      min_horizon=min_horizon, fixed_batch_size=fixed_batch_size, augment=augment)
  return UnrolledSystem(
      init=init, step=step, horizon=horizon,
      theta0=lopt.init_theta(jax.random.key(0)) if theta0 is None else theta0,
      name=name or f"{'+'.join(t.name for t in family)}/{lopt.name}",
      data=tuple(t.data for t in family),
      episode_length=(lambda s: s.length) if truncation == "log_uniform" else None,
      min_horizon=min_horizon)
