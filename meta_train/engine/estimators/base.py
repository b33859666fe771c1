"""The estimator interface, argument checks, and the shared online-ES base.

Every estimator::

    est = NRES(system, num_particles=N, sigma=s, unroll_length=W)
    ws = est.init(key, theta)                       # workers (burned in unless lockstep=True)
    grad, ws, metrics = est.estimate(key, theta, ws)  # one window: grad has theta's structure

``init`` and ``estimate`` are pure and jit-compiled once per shape; they can be vmapped, scanned
and sharded like any JAX function. ``key`` is a typed key (``jax.random.key``) or a raw
``uint32[2]`` one (``jax.random.PRNGKey``): the same seed gives the same results; anything else is
a ``ConfigError`` naming the argument. ``metrics`` is a dict of scalars:

* ``meta_loss``: mean per-step loss of the window (over valid steps; for ES the mean of both
  particles of each pair, i.e. of the perturbed losses),
* ``grad_norm``: the global norm of ``grad``,
* ``grad_variance``: an estimate of ``tr Cov[grad]`` from the spread of the pairs' own estimates
  (ES) or trajectories' gradients (TBPTT) over their number,
* ``nonfinite``: (pair, step) terms masked because a loss was NaN/inf (they never reach ``grad``),
* ``resets``: episodes begun during the window,
* ``unroll_steps``: trajectory steps this call ran (every particle counted).
"""

from __future__ import annotations

import abc
import copy
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from lopt_meta.errors import ConfigError, check_positive_int
from lopt_meta.prng import as_typed_key
from meta_train.engine import sharding, window, workers
from meta_train.engine import maths
from meta_train.engine.window import NoiseRule
from meta_train.engine.workers import WorkerState
from tasks.base import UnrolledSystem

PyTree = Any
Metrics = dict[str, jax.Array]



class EveryWindowRule(NoiseRule):
  """The draws of PES and truncated ES: a pair draws fresh noise at the first step of every
  window (and at an episode start inside one). Subclasses say what a step is credited to."""

  draws_every_window = True  # at each window's first step

  def max_draws(self, num_steps: int) -> int:
    del num_steps
    return 1

  def next_draw(self, prev: jax.Array, *, t: jax.Array, start: jax.Array, end: jax.Array,
                num_steps: int) -> jax.Array:
    del t, start, end
    return jnp.where(prev < 0, 0, num_steps)  # step 0, before any other draw


def check_num_particles(num_particles, *, antithetic: bool = True) -> int:
  check_positive_int("num_particles", num_particles)
  if antithetic and num_particles % 2:
    raise ConfigError("num_particles",
                      f"must be even (N counts particles: N/2 antithetic pairs); got {num_particles}")
  return num_particles


def check_sigma(sigma) -> float:
  try:
    value = float(sigma)
  except (TypeError, ValueError):
    raise ConfigError("sigma", f"must be a positive number; got {sigma!r}") from None
  if not (value > 0 and math.isfinite(value)):
    raise ConfigError("sigma", f"must be a positive finite number; got {sigma!r}")
  return value


def check_unroll_length(unroll_length, system: UnrolledSystem) -> int:
  check_positive_int("unroll_length", unroll_length, "W")
  shortest = system.shortest_episode
  if shortest is not None and unroll_length > shortest:
    what = (f"the horizon T={shortest}" if shortest == system.horizon
            else f"the shortest episode ({shortest} steps)")
    raise ConfigError("unroll_length", f"W={unroll_length} is longer than {what} of "
                      f"{system.name!r}; allowed: 1..{shortest}")
  return unroll_length


def check_theta(theta) -> None:
  if not jax.tree.leaves(theta):
    raise ConfigError("theta", f"has no arrays (got {theta!r}): there is nothing to estimate")


def check_system(system) -> UnrolledSystem:
  if not isinstance(system, UnrolledSystem):
    raise ConfigError("system", f"must be a tasks.UnrolledSystem; got {type(system).__name__}")
  return system


class Estimator(abc.ABC):
  """A gradient estimator for the mean per-step loss of an unrolled system.

  Subclasses implement the pure functions :meth:`init_fn` and :meth:`estimate_fn` (the system's
  data an argument); this base jit-compiles them as ``init`` and ``estimate``. Estimators of one
  system derive from :class:`SystemEstimator`, which binds the data; :class:`OverTasks` (a
  distribution of systems) implements the two functions itself.

  Attributes:
    system: the unrolled system.
    num_particles: ``N``, the particles (``N/2`` antithetic pairs for ES estimators).
    unroll_length: ``W``, steps per window (``T`` for FullES).
    mesh: the devices the particles are split over (``None``: one device).
  """

  name: ClassVar[str]
  system: UnrolledSystem
  num_particles: int
  unroll_length: int
  mesh: Mesh | None = None

  @property
  def num_pairs(self) -> int:
    """The batch of the system's vmapped programs: antithetic pairs for online ES, trajectories
    for TBPTT (``num_particles`` unless a subclass says otherwise)."""
    return self.num_particles

  def worker_shardings(self, ws_like: PyTree, split: Any, replicated: Any) -> PyTree:
    """The sharding of each array of a worker state shaped like ``ws_like`` when a run spans
    several processes: ``split`` (the pairs axis over :attr:`mesh`) for arrays, ``replicated``
    for scalars."""
    return jax.tree.map(lambda x: split if x.ndim else replicated, ws_like)

  def __init__(self):
    init_jit, estimate_jit = jax.jit(self.init_fn), jax.jit(self.estimate_fn)
    # Keys are made typed before jit: one compilation for both kinds of key.
    self.init = lambda key, theta: init_jit(as_typed_key(key), theta, self.system.data)
    self.init.__doc__ = "``init(key, theta) -> ws``: jit-compiled, with the system's own data."
    self.estimate = lambda key, theta, ws: estimate_jit(as_typed_key(key), theta, ws,
                                                        self.system.data)
    self.estimate.__doc__ = ("``estimate(key, theta, ws) -> (grad, ws, metrics)``: jit-compiled, "
                             "with the system's own data.")

  @abc.abstractmethod
  def init_fn(self, key: jax.Array, theta: PyTree, data: Any) -> PyTree:
    """Pure ``init`` with the system's ``data`` as an argument (for use inside your own jit).
    ``key``: a typed key or a raw ``uint32[2]`` one (:func:`lopt_meta.prng.as_typed_key`)."""

  @abc.abstractmethod
  def estimate_fn(self, key: jax.Array, theta: PyTree, ws: PyTree,
                  data: Any) -> tuple[PyTree, PyTree, Metrics]:
    """Pure ``estimate`` with the system's ``data`` as an argument (for use inside your own jit:
    the data then reaches the compiled code as an argument, not as a constant). ``key``: a typed
    key or a raw ``uint32[2]`` one (:func:`lopt_meta.prng.as_typed_key`)."""

  @property
  def steps_per_estimate(self) -> int:
    """Trajectory steps one ``estimate`` call runs (every particle counted)."""
    return self.num_particles * self.unroll_length

  def burn_in_steps(self, ws: WorkerState | None) -> int:
    """Trajectory steps ``init`` spent burning the workers in (every branch counted)."""
    if ws is None:
      return 0
    branches = jax.tree.leaves(ws.states)[0].shape[1]
    return int(jnp.sum(ws.burn_in)) * branches

  def __repr__(self):
    fields = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
    return f"{type(self).__name__}({self.system.name!r}, {fields})"

  def _config(self) -> dict[str, Any]:
    return {"num_particles": self.num_particles, "unroll_length": self.unroll_length}


class SystemEstimator(Estimator):
  """An estimator of one system: :meth:`init_fn` and :meth:`estimate_fn` bind the data to the
  system and call ``_init(key, theta)`` and ``_estimate(key, theta, ws)``, which subclasses
  implement."""

  def init_fn(self, key: jax.Array, theta: PyTree, data: Any) -> WorkerState:
    check_theta(theta)
    return self._with_data(data)._init(as_typed_key(key), theta)

  def estimate_fn(self, key: jax.Array, theta: PyTree, ws: WorkerState,
                  data: Any) -> tuple[PyTree, WorkerState, Metrics]:
    check_theta(theta)
    return self._with_data(data)._estimate(as_typed_key(key), theta, ws)

  def _with_data(self, data: Any) -> "SystemEstimator":
    """A shallow copy whose system has ``data`` bound (itself, for a system without data)."""
    if self.system.data is None and data is None:
      return self
    clone = copy.copy(self)
    clone.system = self.system.bind(data)
    return clone

  @abc.abstractmethod
  def _init(self, key: jax.Array, theta: PyTree) -> WorkerState:
    """Workers for ``theta``: ``init(key, theta) -> ws``."""

  @abc.abstractmethod
  def _estimate(self, key: jax.Array, theta: PyTree,
                ws: WorkerState) -> tuple[PyTree, WorkerState, Metrics]:
    """One window: ``estimate(key, theta, ws) -> (grad, ws, metrics)``."""


def make_metrics(grad: PyTree, *, meta_loss: jax.Array, grad_variance: jax.Array,
                 nonfinite: jax.Array, resets: jax.Array, unroll_steps: int) -> Metrics:
  """The metrics every estimator reports (see the module docstring), ``grad_norm`` computed."""
  return {"meta_loss": meta_loss, "grad_norm": maths.global_norm(grad),
          "grad_variance": grad_variance, "nonfinite": nonfinite, "resets": resets,
          "unroll_steps": jnp.asarray(unroll_steps, jnp.int32)}


def es_estimate(out: window.WindowOut, sigma: float, steps: int) -> tuple[PyTree, Metrics]:
  """The estimate and metrics of an antithetic window (see the module docstring), from its
  per-pair sums (:func:`maths.antithetic_summary`: two products over the pairs)."""
  grad, variance, totals = maths.antithetic_summary(
      out.gsum, out.count, sigma, {"loss": out.loss_plus_minus, "nonfinite": out.nonfinite,
                                   "resets": out.resets})
  valid_terms = jnp.maximum(totals["count"], 1).astype(jnp.float32)
  return grad, make_metrics(grad, meta_loss=jnp.sum(totals["loss"]) / (2.0 * valid_terms),
                            grad_variance=variance, nonfinite=totals["nonfinite"],
                            resets=totals["resets"], unroll_steps=steps)


def start_workers(est: Estimator, key: jax.Array, theta: PyTree, *, rows: int,
                  signs: tuple[float, ...], sigma: float, noise_rule: NoiseRule | None,
                  with_noise: bool, accumulate: bool) -> WorkerState:
  """``rows`` rows of ``len(signs)`` workers at the start of an episode, then (unless
  ``est.lockstep``) each row burned in to a uniformly random position of its episode: the
  ``init`` of every windowed estimator."""
  init_key, unlock_key = jax.random.split(key)
  ws = workers.init_workers(est.system, theta, init_key, rows, len(signs), with_noise=with_noise,
                            accumulate=accumulate)
  if not est.lockstep:
    ws = workers.step_unlock(est.system, theta, ws, unlock_key, signs=signs, sigma=sigma,
                             noise_rule=noise_rule, window_length=est.unroll_length, mesh=est.mesh)
  return ws


class OnlineES(SystemEstimator):
  """Persistent antithetic workers, one estimate per window of ``W`` steps (NRES, PES, GPES_K).

  Each of the ``N/2`` pairs keeps its two states (``theta + eps``, ``theta - eps``) across windows
  and episodes; an episode resets at the horizon with a fresh state and fresh noise. Unless
  ``lockstep=True`` every pair is first burned in to a uniformly random position of its episode,
  so that the population covers the horizon at every outer step. With several devices (default:
  all of ``jax.devices()``) the pairs are split over them (:mod:`meta_train.engine.sharding`).
  """

  noise_rule: ClassVar[NoiseRule]
  """When the pairs draw noise (besides at episode starts) and what their loss differences are
  credited to: each estimator's own rule, defined beside it."""

  def __init__(self, system: UnrolledSystem, *, num_particles: int, sigma: float,
               unroll_length: int, lockstep: bool = False,
               devices: Sequence[jax.Device] | None = None):
    self.system = check_system(system)
    self.num_particles = check_num_particles(num_particles)
    self.sigma = check_sigma(sigma)
    self.unroll_length = check_unroll_length(unroll_length, self.system)
    self.lockstep = bool(lockstep)
    self.mesh = sharding.pairs_mesh(self.num_pairs, devices)
    super().__init__()

  @property
  def num_pairs(self) -> int:
    return self.num_particles // 2

  def _config(self):
    return {"num_particles": self.num_particles, "sigma": self.sigma,
            "unroll_length": self.unroll_length, "lockstep": self.lockstep}

  def _init(self, key, theta):
    return start_workers(self, key, theta, rows=self.num_pairs, signs=window.ANTITHETIC,
                         sigma=self.sigma, noise_rule=self.noise_rule, with_noise=True,
                         accumulate=self.noise_rule.accumulates)

  def _estimate(self, key, theta, ws):
    ws, out = window.run_window(self.system, theta, ws, key, self.unroll_length,
                                signs=window.ANTITHETIC, sigma=self.sigma,
                                noise_rule=self.noise_rule, mesh=self.mesh)
    grad, metrics = es_estimate(out, self.sigma, self.steps_per_estimate)
    return grad, ws, metrics
