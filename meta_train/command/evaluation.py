"""Unsmoothed evaluation of theta on fixed fresh episodes, and the hand-designed baseline.

For an unrolled system the evaluation is the full-horizon mean per-step loss at theta (no noise),
averaged over ``eval_episodes`` episodes drawn from a fixed key, so that evaluations along a run
are comparable. For a learned optimizer it is the mean training loss of the inner task over the
full horizon (every episode ``T`` steps, the training-loss meta-loss), and its outer-validation
loss after each step; beside it, Adam on the same episodes (same initializations, same data
order) at each learning rate of a small grid, the best of which is the baseline.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lopt_meta
from lopt_meta.prng import as_typed_key
from meta_train.command import build as build_lib
from meta_train.command import config as config_lib
from tasks.base import UnrolledSystem

CURVE_POINTS = 100


def curve_fn(system: UnrolledSystem, num_episodes: int, num_steps: int):
  """``f(theta, key, data) -> [num_steps]``: per-step losses averaged over episodes (``key``:
  typed or a raw ``uint32[2]`` key, the same bits)."""
  def curve(theta, key, data):
    bound = system.bind(data)
    keys = jax.random.split(as_typed_key(key), num_episodes)
    losses = jax.vmap(lambda k: bound.episode_losses(theta, k, num_steps))(keys)
    return jnp.nanmean(losses, axis=0)
  return jax.jit(curve)


class _AdamAtLearningRate(lopt_meta.LearnedOptimizer):
  """``optax.adam`` whose learning rate is theta (a float32 scalar; the other hyperparameters
  fixed): the baseline's grid of learning rates runs through one compiled rollout, not one per
  learning rate. The same arithmetic as :class:`lopt_meta.Adam` at that learning rate (optax
  multiplies by the learning rate as a float32 either way)."""

  name = "adam"

  def __init__(self, adam: lopt_meta.Adam):
    self.adam = adam

  def init_theta(self, key):
    del key
    return jnp.float32(self.adam.learning_rate)

  def _tx(self, learning_rate):
    return optax.adam(learning_rate, b1=self.adam.b1, b2=self.adam.b2, eps=self.adam.eps)

  def init(self, params, *, num_steps=None):
    del num_steps
    return self._tx(self.adam.learning_rate).init(params)  # Adam's state: no learning rate

  def update(self, theta, grads, state, params, *, loss=None):
    del loss
    return self._tx(theta).update(grads, state, params)

  def config(self):
    return self.adam.config()


def subsample(curve: np.ndarray, points: int = CURVE_POINTS) -> dict[str, list]:
  """``{"step": [...], "loss": [...]}`` at up to ``points`` evenly spaced steps (1-based)."""
  idx = np.unique(np.round(np.linspace(0, len(curve) - 1, min(points, len(curve)))).astype(int))
  return {"step": (idx + 1).tolist(), "loss": [float(curve[i]) for i in idx]}


class EvalSystems(NamedTuple):
  """What an :class:`Evaluator` runs: the system theta is evaluated on (full-length episodes,
  the training-loss meta-loss), and for a learned optimizer the same with the outer-validation
  loss (``valid``) and with Adam at a learning rate given as theta (``adam``), else ``None``."""
  system: UnrolledSystem
  valid: UnrolledSystem | None = None
  adam: UnrolledSystem | None = None


def make_evaluator(config: config_lib.TrainConfig,
                   system: UnrolledSystem | None = None) -> Evaluator | DistributionEvaluator:
  """The evaluator of a run's theta: per member for a task distribution. ``system``: the run's
  own where the caller has built it (an unrolled system is evaluated on it); the systems of a
  learned optimizer are built here, once each (full-length episodes)."""
  if config.task.is_distribution:
    views = _learned_optimizer_views(config)
    return DistributionEvaluator({name: Evaluator(config, EvalSystems(*(v.systems[name]
                                                                        for v in views)))
                                  for name in views[0].systems})
  if config.task.is_inner:
    return Evaluator(config, EvalSystems(*_learned_optimizer_views(config)))
  return Evaluator(config, EvalSystems(
      system if system is not None else build_lib.build_system(config)))


def _learned_optimizer_views(config: config_lib.TrainConfig) -> list:
  """The configured task trained by the learned optimizer with the training loss, with the
  outer-validation loss, and by Adam (full-length episodes); each built once."""
  build = functools.partial(build_lib.build_system, config, for_evaluation=True)
  return [build(), build(meta_loss="valid"), build(lopt=_AdamAtLearningRate(lopt_meta.Adam()))]


class Evaluator:
  """Evaluates theta on :class:`EvalSystems`; for learned optimizers, also runs the Adam
  baseline (once)."""

  def __init__(self, config: config_lib.TrainConfig, systems: EvalSystems):
    self.config = config
    self.key = jax.random.fold_in(jax.random.key(config.run.seed), 2)
    self.inner = systems.adam is not None
    self.system = systems.system
    self.num_steps = self.system.horizon or config.run.eval_steps
    episodes = config.run.eval_episodes
    self._curve = curve_fn(self.system, episodes, self.num_steps)
    self._baseline = None
    self._valid = None
    if self.inner:
      self.valid_system = systems.valid
      self._valid = curve_fn(self.valid_system, episodes, self.num_steps)
      self._baseline = (systems.adam, curve_fn(systems.adam, episodes, self.num_steps))
    self._baseline_result: dict[str, Any] | None = None

  def baseline(self) -> dict[str, Any]:
    """Adam's best learning rate on the evaluation episodes: ``adam_lr``, ``adam_loss`` (mean
    over steps and episodes), ``adam_final_loss``, ``adam_curve``; empty for unrolled systems."""
    if not self.inner:
      return {}
    if self._baseline_result is None:
      adam, curve_fn = self._baseline
      results = {lr: np.asarray(curve_fn(jnp.float32(lr), self.key, adam.data))
                 for lr in self.config.run.baseline_lrs}
      best = min(results, key=lambda lr: float(np.mean(results[lr])))
      self._baseline_result = {
          "adam_lr": best, "adam_loss": float(np.mean(results[best])),
          "adam_final_loss": float(results[best][-1]),
          "adam_losses": {f"{lr:g}": float(np.mean(c)) for lr, c in results.items()},
          "adam_curve": subsample(results[best])}
    return self._baseline_result

  def __call__(self, theta) -> dict[str, Any]:
    """``eval_loss`` (mean over steps and episodes), ``eval_final_loss``, ``eval_curve``, for
    policy learning ``eval_return`` (the mean episode return, ``-T * eval_loss``) and, for
    learned optimizers, ``eval_vs_adam`` (eval_loss over the baseline's) and the outer-validation
    loss after each step (``eval_outer_valid_loss``, ``eval_outer_valid_final_loss``)."""
    curve = np.asarray(self._curve(theta, self.key, self.system.data))
    out = {"eval_loss": float(np.nanmean(curve)), "eval_final_loss": float(curve[-1]),
           "eval_curve": subsample(curve)}
    if self.system.loss_is_negative_reward:
      out["eval_return"] = -float(np.nansum(curve))  # the mean over episodes of sum_t reward_t
    if self.inner:
      base = self.baseline()["adam_loss"]
      out["eval_vs_adam"] = out["eval_loss"] / base if base > 0 else math.nan
      valid = np.asarray(self._valid(theta, self.key, self.valid_system.data))
      out["eval_outer_valid_loss"] = float(np.nanmean(valid))
      out["eval_outer_valid_final_loss"] = float(valid[-1])
    return out


class DistributionEvaluator:
  """Evaluates theta on every member of a task distribution (each over its own horizon, beside
  Adam's best learning rate on it). Every key of :class:`Evaluator`'s results appears per member
  as ``KEY/NAME`` (curves included); across members, ``eval_loss`` is the mean of the members'
  and ``eval_vs_adam`` the geometric mean of their ratios to Adam."""

  def __init__(self, members: dict[str, Evaluator]):
    self.members = members

  def baseline(self) -> dict[str, Any]:
    return {f"{key}/{name}": value for name, e in self.members.items()
            for key, value in e.baseline().items() if key != "adam_losses"}

  def __call__(self, theta) -> dict[str, Any]:
    per = {name: e(theta) for name, e in self.members.items()}
    out = {f"{key}/{name}": value for name, result in per.items() for key, value in result.items()}
    out["eval_loss"] = float(np.mean([r["eval_loss"] for r in per.values()]))
    ratios = [r["eval_vs_adam"] for r in per.values()]
    out["eval_vs_adam"] = float(np.exp(np.mean(np.log(ratios)))) if all(
        r > 0 for r in ratios) else math.nan
    return out
