"""The outer loop: estimate -> (clip) -> optax update -> log -> evaluate.

:class:`Trainer` is the pure, compiled core: ``init(key, theta) -> TrainState`` and
``run(state, num_steps) -> (state, metrics)``, which runs ``num_steps`` outer steps inside one
``jax.lax.scan`` (so a run of thousands of tiny updates is not bound by Python). :func:`train`
wraps it for a :class:`~meta_train.config.TrainConfig`: run folder, ``metrics.jsonl``, evaluation.

A non-finite estimate never reaches theta: the update is skipped (theta and the outer optimizer
state are kept), counted in ``skipped_updates`` and reported.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from lopt_meta.errors import ConfigError
from meta_train import config as config_lib
from meta_train import evaluation
from meta_train import tree as tree_lib
from meta_train.estimators import Estimator

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
    worker_key, key = jax.random.split(key)
    theta = jax.tree.map(jnp.asarray, theta)
    return TrainState(step=jnp.zeros((), jnp.int32), theta=theta,
                      opt_state=self.optimizer.init(theta),
                      workers=self.estimator.init(worker_key, theta), key=key)

  def run(self, state: TrainState, num_steps: int) -> tuple[TrainState, dict[str, jax.Array]]:
    """Runs ``num_steps`` outer steps; returns the new state and per-step metrics ``[num_steps]``."""
    return self._run(state, self.estimator.system.data, num_steps)

  def _outer_step(self, data, state: TrainState, _):
    key, est_key = jax.random.split(state.key)
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


def _jsonable(x):
  x = np.asarray(x)
  return x.item() if x.ndim == 0 else x.tolist()


class MetricsLog:
  """Appends one JSON object per logged step to ``run_dir/metrics.jsonl`` (flushed each line)."""

  def __init__(self, path: Path):
    self.path = path
    self._file = open(path, "a", encoding="utf-8")

  def write(self, record: dict[str, Any]) -> None:
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()

  def close(self):
    self._file.close()


def summarize(chunk_metrics: dict[str, jax.Array]) -> dict[str, Any]:
  """Reduces per-step metrics of a chunk: counts are summed, everything else averaged."""
  summed = ("nonfinite", "resets", "unroll_steps", "skipped_updates")
  out = {}
  for name, values in chunk_metrics.items():
    values = np.asarray(values)
    out[name] = int(values.sum()) if name in summed else float(values.mean())
  return out


def _eval_line(step: int | None, record: dict[str, Any]) -> str:
  line = f"eval_loss {record['eval_loss']:.6g}"
  if "adam_loss" in record:
    line += f" (Adam lr {record['adam_lr']:g}: {record['adam_loss']:.6g})"
  elif "eval_vs_adam" in record:
    line += f" ({record['eval_vs_adam']:.3f}x Adam)"
  return line if step is None else f"step {step}: {line}"


def prepare_run_dir(config: config_lib.TrainConfig, overwrite: bool = False) -> Path:
  """Creates the run folder, refusing one that already holds files unless ``overwrite``."""
  run_dir = config.run_dir()
  if run_dir.exists() and not run_dir.is_dir():
    raise ConfigError("out", f"{run_dir} exists and is not a folder")
  if run_dir.exists() and any(run_dir.iterdir()):
    if not overwrite:
      raise ConfigError("out", f"run folder {run_dir} already holds a run; choose another --out "
                        "or pass --overwrite")
    for name in ("metrics.jsonl", "config.json"):
      (run_dir / name).unlink(missing_ok=True)
  run_dir.mkdir(parents=True, exist_ok=True)
  (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
  return run_dir


def train(config: config_lib.TrainConfig, *, overwrite: bool = False,
          echo: Callable[[str], None] | None = None) -> tuple[TrainState, Path]:
  """Runs the configured meta-training; writes ``config.json`` and ``metrics.jsonl``.

  Everything is validated (and the run folder checked) before any compute.

  Returns:
    ``(final_state, run_dir)``.
  """
  echo = echo if echo is not None else (lambda line: print(line, flush=True))
  system, estimator = config_lib.validate(config)
  run_dir = prepare_run_dir(config, overwrite=overwrite)
  trainer = Trainer(estimator, outer_optimizer(config.outer.outer_optimizer, config.outer.outer_lr,
                                               config.outer.grad_clip))
  train_key = jax.random.key(config.run.seed)
  evaluate = evaluation.Evaluator(config, system) if config.run.eval_every else None
  theta_size = sum(np.size(x) for x in jax.tree.leaves(system.theta0))

  log = MetricsLog(run_dir / "metrics.jsonl")
  echo(f"meta-train: {estimator!r} on {system.name!r}, {config.outer.outer_steps} outer steps "
       f"-> {run_dir}")
  start = time.perf_counter()
  state = trainer.init(train_key, system.theta0)
  total_unroll = estimator.burn_in_steps(state.workers)
  try:
    if evaluate is not None:
      record = {"step": 0, "time_s": time.perf_counter() - start, **evaluate(state.theta),
                **evaluate.baseline()}
      if theta_size <= 32:
        record["theta"] = _jsonable(state.theta)
      log.write(record)
      echo(_eval_line(0, record))
    done = 0
    # Echo about 50 lines however long the run (metrics.jsonl gets every logged chunk).
    echo_every = max(1, config.outer.outer_steps // 50)
    next_echo = echo_every
    last_time = time.perf_counter()
    while done < config.outer.outer_steps:
      n = min(config.run.log_every, config.outer.outer_steps - done)
      state, metrics = trainer.run(state, n)
      record = summarize(metrics)
      done += n
      now = time.perf_counter()
      total_unroll += record["unroll_steps"]
      record.update(step=done, time_s=now - start, outer_steps_per_s=n / (now - last_time),
                    total_unroll_steps=total_unroll)
      last_time = now
      if theta_size <= 32:
        record["theta"] = _jsonable(state.theta)
      if evaluate is not None and (done % config.run.eval_every == 0
                                   or done == config.outer.outer_steps):
        record.update(evaluate(state.theta))
      log.write(record)
      if record["nonfinite"] or record["skipped_updates"]:
        print(f"meta-train: step {done}: masked {record['nonfinite']} non-finite losses, skipped "
              f"{record['skipped_updates']} non-finite updates", file=sys.stderr, flush=True)
      if done >= next_echo or done == config.outer.outer_steps:
        next_echo = done + echo_every
        line = (f"step {done}: meta_loss {record['meta_loss']:.6g}  "
                f"grad_norm {record['grad_norm']:.3g}  {record['outer_steps_per_s']:.0f} steps/s")
        if "eval_loss" in record:
          line += "  " + _eval_line(None, record)
        echo(line)
  finally:
    log.close()
  return state, run_dir
