"""Black-box baselines for hyperparameter optimization: random search and grid search.

Both evaluate the system's own objective, the mean per-step meta-loss of full inner runs
(``system.mean_loss``), at hyperparameters drawn from (random) or laid out over (grid) the
declared initial ranges, in unconstrained units. Compute is counted in the unit the estimators'
runs log as ``total_unroll_steps``: inner steps, summed over particles or trials. One trial of
``episodes`` runs costs ``episodes * T``; a random search with budget ``B`` runs
``B // (episodes * T)`` trials, so it spends at most ``B`` and never more.

>>> import jax, tasks
>>> from meta_train import search
>>> system = tasks.get("lr_decay_schedule", horizon=20, dataset="digits")
>>> result = search.random_search(system, budget=100, key=jax.random.key(0))
>>> result.compute.tolist()
[20, 40, 60, 80, 100]
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lopt_meta.errors import ConfigError, check_positive_int
from tasks import hpo as hp
from tasks.base import UnrolledSystem


class SearchResult(NamedTuple):
  """A random search, trial by trial.

  Attributes:
    theta: ``{name: float32 [trials]}``, each trial's unconstrained hyperparameters.
    objective: ``[trials]``, each trial's mean per-step meta-loss.
    best_so_far: ``[trials]``, the lowest objective up to and including each trial.
    compute: ``int64 [trials]``, inner steps spent up to and including each trial.
  """
  theta: dict[str, np.ndarray]
  objective: np.ndarray
  best_so_far: np.ndarray
  compute: np.ndarray


class GridResult(NamedTuple):
  """A grid search over one or two hyperparameters (the others at ``system.theta0``).

  Attributes:
    axes: ``{name: float32 [points]}``, each axis's unconstrained values, in grid order.
    objective: ``[points_1(, points_2)]``, the mean per-step meta-loss at each grid point.
    compute: inner steps the whole grid spent.
  """
  axes: dict[str, np.ndarray]
  objective: np.ndarray
  compute: int

  @property
  def best_theta(self) -> dict[str, float]:
    """The unconstrained values of the grid's best point (the searched names only)."""
    index = np.unravel_index(int(np.nanargmin(self.objective)), self.objective.shape)
    return {name: float(values[i]) for (name, values), i in zip(self.axes.items(), index)}


def _space_of(system: UnrolledSystem) -> Mapping[str, hp.Transform]:
  if system.space is None:
    raise ConfigError("task", f"system {system.name!r} has no declared hyperparameters "
                      "(random and grid search need a hyperparameter system: tasks.hparam_system)")
  if system.horizon is None:
    raise ConfigError("task", f"system {system.name!r} never resets: a trial needs a full inner run")
  return system.space


def _objectives(system: UnrolledSystem, thetas: dict[str, jax.Array], keys: jax.Array,
                episodes: int, chunk: int) -> np.ndarray:
  """The mean per-step meta-loss of each theta (``{name: [n]}``) over ``episodes`` runs drawn
  with its key (``keys: [n]``), ``chunk`` thetas at a time under one compiled ``lax.map``."""
  def one(theta_and_key, data):
    theta, key = theta_and_key
    return system.bind(data).mean_loss(theta, key, num_episodes=episodes)

  @jax.jit
  def run(thetas, keys, data):
    return jax.lax.map(lambda x: one(x, data), (thetas, keys), batch_size=chunk)
  return np.asarray(run(thetas, keys, system.data), dtype=np.float64)


def random_search(system: UnrolledSystem, *, budget: int, key: jax.Array, episodes: int = 1,
                  chunk: int = 16) -> SearchResult:
  """Random search over the declared initial ranges at a compute budget.

  Trial ``i`` draws theta with :func:`tasks.hpo.sample` from
  ``fold_in(key, 2 i)`` and runs ``episodes`` full inner runs from ``fold_in(key, 2 i + 1)``.

  Args:
    system: a hyperparameter system (``system.space`` set) with a finite horizon ``T``.
    budget: inner steps to spend (e.g. an ES run's ``total_unroll_steps``): ``budget //
      (episodes * T)`` trials.
    key: the search's key.
    episodes: inner runs per trial (their objectives are averaged).
    chunk: trials evaluated together (vmapped); only memory and speed depend on it.
  """
  space = _space_of(system)
  budget, episodes, chunk = (check_positive_int("budget", budget), check_positive_int("episodes", episodes),
                             check_positive_int("chunk", chunk))
  per_trial = episodes * system.horizon
  trials = budget // per_trial
  if trials < 1:
    raise ConfigError("budget", f"must cover at least one trial ({episodes} x T={system.horizon} "
                      f"= {per_trial} inner steps); got {budget}")
  indices = jnp.arange(trials)
  thetas = jax.vmap(lambda i: hp.sample(space, jax.random.fold_in(key, 2 * i)))(indices)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, 2 * i + 1))(indices)
  objective = _objectives(system, thetas, keys, episodes, chunk)
  finite = np.where(np.isfinite(objective), objective, np.inf)
  return SearchResult(theta={k: np.asarray(v) for k, v in thetas.items()}, objective=objective,
                      best_so_far=np.minimum.accumulate(finite),
                      compute=per_trial * np.arange(1, trials + 1, dtype=np.int64))


def grid_search(system: UnrolledSystem, *, points: Mapping[str, int], key: jax.Array,
                episodes: int = 1, bounds: Mapping[str, tuple[float, float]] | None = None,
                chunk: int = 16) -> GridResult:
  """The objective on a grid over one or two hyperparameters, the others at ``system.theta0``.

  Every point runs the same ``episodes`` inner runs (drawn from ``key``), so differences
  between points come from the hyperparameters alone.

  Args:
    system: a hyperparameter system with a finite horizon.
    points: ``{name: number of points}`` for one or two declared hyperparameters.
    key: the key of the inner runs.
    episodes: inner runs per point.
    bounds: ``{name: (low, high)}`` in unconstrained units (default: the declared initial range);
      the points are evenly spaced from ``low`` to ``high`` inclusive.
    chunk: points evaluated together (vmapped).
  """
  space = _space_of(system)
  episodes, chunk = check_positive_int("episodes", episodes), check_positive_int("chunk", chunk)
  if not isinstance(points, Mapping) or not 1 <= len(points) <= 2:
    raise ConfigError("points", f"grid search takes one or two hyperparameters; got {points!r}")
  axes = {}
  for name, n in points.items():
    if name not in space:
      raise ConfigError("points", f"unknown hyperparameter {name!r}; declared: {', '.join(space)}")
    n = check_positive_int("points", n)
    low, high = (bounds or {}).get(name, space[name].bounds)
    axes[name] = np.linspace(low, high, n, dtype=np.float32)
  mesh = np.meshgrid(*axes.values(), indexing="ij")
  shape = mesh[0].shape
  size = math.prod(shape)
  thetas = {name: jnp.full((size,), value, jnp.float32) for name, value in system.theta0.items()}
  for name, values in zip(axes, mesh):
    thetas[name] = jnp.asarray(values.reshape(-1))
  keys = jax.vmap(lambda _: key)(jnp.arange(size))  # the same inner runs at every point
  objective = _objectives(system, thetas, keys, episodes, chunk).reshape(shape)
  return GridResult(axes=axes, objective=objective, compute=size * episodes * system.horizon)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def write_random(result: SearchResult, out: str | Path, **config) -> Path:
  """A run-like folder: ``config.json`` (``{"search": "random", **config}``) and
  ``metrics.jsonl`` with one record per trial (``step`` = ``trial``, ``eval_loss``: its objective,
  ``best_so_far``, ``total_unroll_steps``: compute so far, ``theta``), which ``meta-train plot``
  draws beside estimator runs."""
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "config.json").write_text(json.dumps({"search": "random", **config}, indent=2) + "\n")
  with open(out / "metrics.jsonl", "w") as f:
    for i in range(len(result.objective)):
      f.write(json.dumps({"step": i + 1, "trial": i + 1, "eval_loss": float(result.objective[i]),
                          "best_so_far": float(result.best_so_far[i]),
                          "total_unroll_steps": int(result.compute[i]),
                          "theta": {k: float(v[i]) for k, v in result.theta.items()}}) + "\n")
  return out


def write_grid(result: GridResult, path: str | Path) -> Path:
  """The grid as ``.npz``: ``names``, ``axis_<i>`` and ``objective`` (see :func:`read_grid`)."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(path, names=np.asarray(list(result.axes)), objective=result.objective,
           compute=result.compute,
           **{f"axis_{i}": values for i, values in enumerate(result.axes.values())})
  return path


def read_grid(path: str | Path) -> GridResult:
  """A grid written by :func:`write_grid`."""
  try:
    with np.load(path) as f:
      names = [str(n) for n in f["names"]]
      return GridResult(axes={n: f[f"axis_{i}"] for i, n in enumerate(names)},
                        objective=f["objective"], compute=int(f["compute"]))
  except (OSError, KeyError, ValueError) as e:
    raise ConfigError("landscape", f"{path} is not a grid written by grid search ({e})") from None


def read_search(run_dir: str | Path) -> dict[str, Any]:
  """A random search's settings (the ``config.json`` of its folder, which has a ``search`` entry),
  or ``{}`` for any other folder (a meta-training run's ``config.json`` is read by
  :func:`meta_train.command.run.read_config`)."""
  path = Path(run_dir) / "config.json"
  if not path.is_file():
    return {}
  config = json.loads(path.read_text())
  return config if "search" in config else {}
