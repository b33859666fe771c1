"""Hyperparameter optimization as an unrolled system: theta is a dict of unconstrained values.

The transforms of a declared space (:mod:`tasks.hpo.space`) run inside the step, so the system is
an ordinary :class:`UnrolledSystem`: every estimator, step-unlocking (``lockstep=False``,
"breakstep") or lockstep training, checkpointing and the ``meta-train`` command work unchanged.
Two ways to build one:

* :func:`hparam_system` takes any training loop: ``init(key) -> state`` and
  ``train_step(hparams, state, key) -> (state, loss)``, where ``hparams`` is the dict of
  constrained values and ``loss`` the step's meta-loss.
* :func:`optax_system` takes an optax optimizer factory ``make_optimizer(hparams)`` and an
  :class:`tasks.InnerTask` (a Flax model and its data) and trains it with the one inner-training
  core (:mod:`tasks.inner_training`).

The system's ``space`` field holds the declaration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import optax

from lopt_meta.errors import ConfigError
from tasks.base import UnrolledSystem
from tasks.hpo.space import Space, centre, check_space, constrain, initial_theta
from tasks.inner_task import InnerTask
from tasks.inner_training import inner_training


def hparam_system(space: Space, init: Callable[..., Any], train_step: Callable[..., Any], *,
                  horizon: int, theta0: Mapping[str, float] | None = None,
                  init_seed: int | None = None, name: str = "hparams",
                  data: Any = None) -> UnrolledSystem:
  """The unrolled system that tunes the hyperparameters of a training loop.

  Args:
    space: ``{name: transform}``, the hyperparameters and their transforms.
    init: ``init(key) -> state`` (``init(key, data)`` if ``data`` is given): a fresh inner run.
    train_step: ``train_step(hparams, state, key) -> (state, loss)`` (``..., key, data)``):
      one inner step at the constrained hyperparameters ``hparams`` (a dict of scalars);
      ``loss`` is the step's meta-loss ``L_t`` (a float scalar: the episode's mean is minimized).
    horizon: ``T``, inner steps per run.
    theta0: starting hyperparameters (constrained values); default: drawn with ``init_seed``,
      or the centre of the ranges.
    init_seed: seed of the draw of the starting hyperparameters.
    name: the system's name.
    data: arrays the functions read (datasets), passed as an argument to compiled code.
  """
  check_space(space)
  theta_start = initial_theta(space, theta0, init_seed)
  if data is None:
    def step(theta, state, key):
      return train_step(constrain(space, theta), state, key)
  else:
    def step(theta, state, key, data):
      return train_step(constrain(space, theta), state, key, data)
  return UnrolledSystem(init=init, step=step, horizon=horizon, theta0=theta_start, name=name,
                        data=data, space=dict(space))


class _OptaxOptimizer(NamedTuple):
  """``make_optimizer`` as inner training's optimizer: the update at the step's hyperparameters;
  the state made once per run by ``structure`` (the optimizer at the ranges' centre)."""
  make_optimizer: Callable[[dict[str, jax.Array]], optax.GradientTransformation]
  structure: optax.GradientTransformation

  def init(self, params, *, num_steps=None):
    del num_steps
    return self.structure.init(params)

  def update(self, hparams, grads, opt_state, params, *, loss=None):
    del loss
    return self.make_optimizer(hparams).update(grads, opt_state, params)


def _check_optax_arguments(space, make_optimizer):
  """Raises ConfigError for a bad argument of :func:`optax_system`; returns the optimizer at the
  ranges' centre (whose ``init`` makes every run's optimizer state)."""
  check_space(space)
  if not callable(make_optimizer):
    raise ConfigError("make_optimizer", "must be a function hparams -> optax.GradientTransformation")
  structure = make_optimizer(constrain(space, centre(space)))
  if not isinstance(structure, optax.GradientTransformation):
    raise ConfigError("make_optimizer", "must return an optax.GradientTransformation; got "
                      f"{type(structure).__name__}")
  return structure


def optax_system(space: Space, make_optimizer: Callable[[dict[str, jax.Array]],
                                                        optax.GradientTransformation],
                 task: InnerTask, *, horizon: int, meta_loss: str = "train",
                 fixed_batch_size: int = 1000, theta0: Mapping[str, float] | None = None,
                 init_seed: int | None = None, name: str | None = None) -> UnrolledSystem:
  """The unrolled system that tunes the hyperparameters of ``make_optimizer`` on ``task``.

  The system is inner training (:mod:`tasks.inner_training`, the core it shares with learned
  optimizers) with ``make_optimizer(hparams).update`` as the update: the optimizer is rebuilt
  from the traced hyperparameters every step; its state is made once per run, at the ranges'
  centre, so its structure and initial values must not depend on the hyperparameters, as holds
  for optax's optimizers and schedules. The per-step meta-loss is one of
  :data:`tasks.inner_training.META_LOSSES`: ``"train"``, ``"valid"`` (the ``many_hparams``
  meta-objective: the sum of validation losses) or ``"telescoping"`` (the per-step differences
  of the loss on a fixed training batch, whose sum is the final loss).

  Args:
    space: ``{name: transform}``.
    make_optimizer: ``hparams -> optax.GradientTransformation``.
    task: an inner task (model, loss and data), e.g. ``tasks.build("digits_mlp")``.
    horizon: ``T``, inner steps per run.
    meta_loss: one of ``"train"``, ``"valid"``, ``"telescoping"``.
    fixed_batch_size: examples in the fixed batch of the telescoping meta-loss.
    theta0, init_seed: the starting hyperparameters (see :func:`hparam_system`).
    name: the system's name (default ``"<task>/optax"``).
  """
  structure = _check_optax_arguments(space, make_optimizer)
  init, step, _ = inner_training(task, _OptaxOptimizer(make_optimizer, structure),
                                 horizon=horizon, meta_loss=meta_loss,
                                 fixed_batch_size=fixed_batch_size)
  return hparam_system(space, init, step, horizon=horizon, theta0=theta0, init_seed=init_seed,
                       name=name or f"{task.name}/optax", data=(task.data,))
