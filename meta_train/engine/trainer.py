"""The outer loop's compiled core: estimate -> (clip) -> optax update.

:class:`Trainer` is pure: ``init(key, theta) -> TrainState`` and ``run(state, num_steps) ->
(state, metrics)``, which runs ``num_steps`` outer steps inside one ``jax.lax.scan`` (so a run of
thousands of tiny updates is not bound by Python). :mod:`meta_train.command.run` drives it for a
configured run: run folder, checkpoints, logs, evaluation, progress.

A non-finite estimate never reaches theta: the update is skipped (theta and the outer optimizer
state are kept), counted in ``skipped_updates`` and reported.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from lopt_meta.prng import as_typed_key
from meta_train.engine import keys as keys_lib
from meta_train.engine import tree as tree_lib
from meta_train.engine.estimators import Estimator

PyTree = Any


@struct.dataclass
class TrainState:
  """Everything the outer loop carries from one step to the next.

  Attributes:
    step: ``int32 []``, outer steps done.
    theta: the meta-parameters.
    opt_state: the outer optimizer's state.
    workers: the estimator's worker state (``None`` for FullES).
    key: the PRNG key of the next outer step.
  """
  step: jax.Array
  theta: PyTree
  opt_state: optax.OptState
  workers: Any
  key: jax.Array


def outer_optimizer(name: str, learning_rate: float,
                    grad_clip: float | None = None) -> optax.GradientTransformation:
  """``optax.adam`` or ``optax.sgd``, after ``clip_by_global_norm`` if ``grad_clip`` is set."""
  base = {"adam": optax.adam, "sgd": optax.sgd}[name](learning_rate)
  return base if grad_clip is None else optax.chain(optax.clip_by_global_norm(grad_clip), base)


class Trainer:
  """Outer optimization of theta with an estimator and an optax optimizer.

  >>> import jax, optax, tasks                                    # doctest: +SKIP
  >>> trainer = Trainer(NRES(system, num_particles=8, sigma=0.1, unroll_length=10), optax.adam(1e-2))
  >>> state = trainer.init(jax.random.key(0), system.theta0)
  >>> state, metrics = trainer.run(state, 100)   # metrics: dict of [100] arrays
  """

  def __init__(self, estimator: Estimator, optimizer: optax.GradientTransformation):
    self.estimator = estimator
    self.optimizer = optimizer
    self._run = jax.jit(self._run_impl, static_argnums=2)

  def init(self, key: jax.Array, theta: PyTree) -> TrainState:
    """The state at step 0; ``key``: a typed key or a raw ``uint32[2]`` one (the same seed gives
    the same run; the state carries a typed key either way)."""
    worker_key, key = jax.random.split(as_typed_key(key))
    theta = jax.tree.map(jnp.asarray, theta)
    return TrainState(step=jnp.zeros((), jnp.int32), theta=theta,
                      opt_state=self.optimizer.init(theta),
                      workers=self.estimator.init(worker_key, theta), key=key)

  def run(self, state: TrainState, num_steps: int,
          data: Any = None) -> tuple[TrainState, dict[str, jax.Array]]:
    """Runs ``num_steps`` outer steps; returns the new state and per-step metrics ``[num_steps]``.

    ``data`` replaces the system's data for these steps (same structure and shapes, so nothing
    recompiles): e.g. a curriculum's current stage (:mod:`tasks.rnn_copy`). Default: the
    system's own."""
    state = state.replace(key=as_typed_key(state.key, "state.key"))
    return self._run(state, self.estimator.system.data if data is None else data, num_steps)

  def _outer_step(self, data, state: TrainState, _):
    key, est_key = keys_lib.split(state.key, 2)  # = jax.random.split, fused (engine.keys)
    grad, workers, metrics = self.estimator.estimate_fn(est_key, state.theta, state.workers, data)
    finite = tree_lib.all_finite(grad)
    updates, opt_state = self.optimizer.update(grad, state.opt_state, state.theta)
    theta = optax.apply_updates(state.theta, updates)
    theta = jax.tree.map(lambda new, old: jnp.where(finite, new, old), theta, state.theta)
    opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), opt_state,
                             state.opt_state)
    metrics = dict(metrics, skipped_updates=(~finite).astype(jnp.int32))
    return TrainState(step=state.step + 1, theta=theta, opt_state=opt_state, workers=workers,
                      key=key), metrics

  def _run_impl(self, state, data, num_steps):
    return jax.lax.scan(functools.partial(self._outer_step, data), state, None, length=num_steps)


def summarize(chunk_metrics: dict[str, jax.Array]) -> dict[str, Any]:
  """Reduces per-step metrics of a chunk: counts are summed, everything else averaged. A
  per-task metric (``NAME/TASK``, NaN at the steps that did not draw the task) is averaged over
  the steps that drew it, and left out when none did."""
  summed = ("nonfinite", "resets", "unroll_steps", "skipped_updates")
  out = {}
  for name, values in chunk_metrics.items():
    values = np.asarray(values)
    if "/" in name:
      if np.any(~np.isnan(values)):
        out[name] = float(np.nanmean(values))
    else:
      out[name] = int(values.sum()) if name in summed else float(values.mean())
  return out
