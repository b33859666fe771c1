"""The unrolled-system interface every estimator sees.

An unrolled computation graph: a state ``s_t`` evolves as ``s_{t+1} = f(s_t, theta, x_t)`` for
``t = 0 .. T-1`` and each step has a loss ``L_t``; we want ``min_theta (1/T) sum_t L_t``. A system
is two pure functions and a horizon::

    system = tasks.UnrolledSystem(
        init=lambda key: jnp.zeros(3),                        # key -> state
        step=lambda theta, s, key: (s + theta, jnp.sum(s**2)),  # -> (new_state, loss)
        horizon=100)

``init(key)`` makes a fresh episode's state; ``step(theta, state, key)`` advances one step and returns
that step's scalar loss. The key carries the step's randomness (which data batch, which initial
condition): the estimators give both particles of an antithetic pair the same keys, so everything
random is shared and only theta differs. The estimators and the methods here take a typed key or
a raw ``uint32[2]`` one (:func:`lopt_meta.prng.as_typed_key`) and hand the functions typed keys.
``horizon`` is ``T``, the length of an episode, or ``None`` for a system that never resets (an
infinite episode). Both functions must be traceable by JAX (``jit``, ``vmap``, ``scan``); the
state can be any pytree of arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from lopt_meta.errors import ConfigError
from lopt_meta.prng import as_typed_key

PRNGKey = jax.Array
Theta = Any  # a pytree of float arrays: the meta-parameters
State = Any  # a pytree of arrays: one particle's inner state


@dataclasses.dataclass(frozen=True, eq=False)  # identity semantics: fields hold functions, arrays
class UnrolledSystem:
  """An unrolled computation graph: ``init``, ``step`` and the horizon ``T``.

  Attributes:
    init: ``init(key) -> state``, a fresh episode's state (``init(key, data)`` if ``data`` is set).
    step: ``step(theta, state, key) -> (new_state, loss)``; ``loss`` is a float scalar, the per-step
      loss ``L_t`` of this step (``step(theta, state, key, data)`` if ``data`` is set).
    horizon: ``T``, the number of steps in an episode (the longest, if episodes vary); ``None``
      for a system that never resets.
    theta0: the default initial meta-parameters (a pytree), or ``None`` if the system has none.
    name: a name for logs and the registry.
    data: a pytree of arrays the functions read (datasets), or ``None``. It lives once on the
      device and reaches compiled code as an argument, never as an embedded constant: estimators
      and the trainer pass it through ``jit``; inside your own ``jit``, take it as an argument and
      use ``system.bind(data)``.
    episode_length: ``episode_length(state) -> int`` for systems whose episodes vary in length
      (read from a fresh episode's state; at most ``horizon``), or ``None`` for always ``T``.
    min_horizon: the shortest possible episode (default: ``horizon``); a truncation window of an
      online estimator may not be longer.
    loss_is_negative_reward: the per-step loss is minus a reward (policy learning): evaluations
      also report the mean episode return ``-sum_t L_t``.
    differentiable: whether ``step`` can be differentiated in theta (truncated backprop needs
      it; a system that calls out of JAX, e.g. MuJoCo's C engine, cannot).
    space: for hyperparameter optimization, the declaration ``{name: transform}`` that maps theta
      (unconstrained values) to the hyperparameters (:mod:`tasks.hpo`); ``None``
      for other systems.
    constants: for hyperparameter optimization, ``{name: value}`` that give the exported
      hyperparameters their meaning beside theta (``lr_decay_schedule``: its time scale ``Q``);
      written with them by ``meta-train export``.
  """

  task_kind: ClassVar[str] = "system"  # what the task registry builds (tasks.registry)

  init: Callable[..., State]
  step: Callable[..., tuple[State, jax.Array]]
  horizon: int | None
  theta0: Theta = None
  name: str = "custom"
  data: Any = None
  episode_length: Callable[[State], jax.Array] | None = None
  min_horizon: int | None = None
  loss_is_negative_reward: bool = False
  differentiable: bool = True
  space: Any = None
  constants: Mapping[str, Any] | None = None

  def __post_init__(self):
    if not callable(self.init):
      raise ConfigError("init", f"must be a function key -> state; got {type(self.init).__name__}")
    if not callable(self.step):
      raise ConfigError(
          "step", f"must be a function (theta, state, key) -> (state, loss); got {type(self.step).__name__}")
    if self.horizon is not None and (
        isinstance(self.horizon, bool) or not isinstance(self.horizon, int) or self.horizon < 1):
      raise ConfigError("horizon", f"must be a positive int (T) or None (never resets); got {self.horizon!r}")
    if self.min_horizon is not None:
      if self.horizon is None or not isinstance(self.min_horizon, int) or not (
          1 <= self.min_horizon <= self.horizon):
        raise ConfigError("min_horizon", f"must be an int in [1, horizon={self.horizon}]; got "
                          f"{self.min_horizon!r}")
    if self.episode_length is not None and self.horizon is None:
      raise ConfigError("episode_length", "needs a finite horizon (the longest episode)")

  @property
  def shortest_episode(self) -> int | None:
    """The shortest episode: ``min_horizon`` if set, else ``horizon`` (``None``: never resets)."""
    return self.min_horizon if self.min_horizon is not None else self.horizon

  def bind(self, data: Any) -> "UnrolledSystem":
    """The same system with ``data`` (arrays or, inside ``jit``, tracers) closed over: its
    ``init(key)`` and ``step(theta, state, key)`` take no data argument and ``data`` is ``None``.
    A system without data is returned as it is."""
    if data is None:
      if self.data is not None:
        raise ConfigError("data", f"system {self.name!r} needs its data to be bound")
      return self
    init, step = self.init, self.step
    return dataclasses.replace(self, init=lambda key: init(key, data),
                               step=lambda theta, s, key: step(theta, s, key, data), data=None)

  def bound(self) -> "UnrolledSystem":
    """``bind(self.data)``: for eager use (inside ``jit`` the data would become a constant)."""
    return self if self.data is None else self.bind(self.data)

  def length_of(self, state: State) -> jax.Array:
    """The length of the episode that ``state`` (a fresh episode's state) begins."""
    if self.episode_length is not None:
      return jnp.asarray(self.episode_length(state), jnp.int32)
    return jnp.asarray(self.horizon if self.horizon is not None else 2**31 - 1, jnp.int32)

  def unroll(self, theta: Theta, state: State, keys: jax.Array) -> tuple[State, jax.Array]:
    """Runs ``len(keys)`` steps from ``state`` with fixed ``theta``, with no episode reset.

    Args:
      theta: the meta-parameters.
      state: the state to start from.
      keys: ``[num_steps]`` PRNG keys, one per step: typed, or raw ``uint32[num_steps, 2]``.

    Returns:
      ``(final_state, losses)`` with ``losses: [num_steps]``.
    """
    step = self.bound().step
    keys = as_typed_key(keys, "keys", batch_ndim=1)

    def body(s, k):
      s, loss = step(theta, s, k)
      return s, loss
    return jax.lax.scan(body, state, keys)

  def episode_losses(self, theta: Theta, key: PRNGKey, num_steps: int | None = None) -> jax.Array:
    """The per-step losses ``[num_steps]`` of one episode from a fresh state (``num_steps``
    defaults to T; for episodes of varying length the steps past the episode's end are NaN)."""
    num_steps = self.horizon if num_steps is None else num_steps
    if num_steps is None:
      raise ConfigError("num_steps", f"system {self.name!r} never resets (horizon=None); pass num_steps")
    init_key, steps_key = jax.random.split(as_typed_key(key))
    state0 = self.bound().init(init_key)
    _, losses = self.unroll(theta, state0, jax.random.split(steps_key, num_steps))
    if self.episode_length is not None:
      losses = jnp.where(jnp.arange(num_steps) < self.length_of(state0), losses, jnp.nan)
    return losses

  def mean_loss(self, theta: Theta, key: PRNGKey, num_episodes: int = 1,
                num_steps: int | None = None) -> jax.Array:
    """The full-unroll objective ``(1/T) sum_t L_t`` at ``theta`` (no smoothing), averaged over
    ``num_episodes`` independent episodes (vmapped). Differentiable in ``theta``."""
    keys = jax.random.split(as_typed_key(key), num_episodes)
    losses = jax.vmap(lambda k: self.episode_losses(theta, k, num_steps))(keys)
    return jnp.nanmean(losses) if self.episode_length is not None else jnp.mean(losses)
