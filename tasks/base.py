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
random is shared and only theta differs. ``horizon`` is ``T``, the length of an episode, or ``None``
for a system that never resets (an infinite episode). Both functions must be traceable by JAX
(``jit``, ``vmap``, ``scan``); the state can be any pytree of arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from lopt_meta.errors import ConfigError

PRNGKey = jax.Array
Theta = Any  # a pytree of float arrays: the meta-parameters
State = Any  # a pytree of arrays: one particle's inner state


@dataclasses.dataclass(frozen=True, eq=False)  # identity semantics: fields hold functions, arrays
class UnrolledSystem:
  """An unrolled computation graph: ``init``, ``step`` and the horizon ``T``.

  Attributes:
    init: ``init(key) -> state``, a fresh episode's state.
    step: ``step(theta, state, key) -> (new_state, loss)``; ``loss`` is a float scalar, the per-step
      loss ``L_t`` of this step.
    horizon: ``T``, the number of steps in an episode; ``None`` for a system that never resets.
    theta0: the default initial meta-parameters (a pytree), or ``None`` if the system has none.
    name: a name for logs and the registry.
  """

  init: Callable[[PRNGKey], State]
  step: Callable[[Theta, State, PRNGKey], tuple[State, jax.Array]]
  horizon: int | None
  theta0: Theta = None
  name: str = "custom"

  def __post_init__(self):
    if not callable(self.init):
      raise ConfigError("init", f"must be a function key -> state; got {type(self.init).__name__}")
    if not callable(self.step):
      raise ConfigError(
          "step", f"must be a function (theta, state, key) -> (state, loss); got {type(self.step).__name__}")
    if self.horizon is not None and (
        isinstance(self.horizon, bool) or not isinstance(self.horizon, int) or self.horizon < 1):
      raise ConfigError("horizon", f"must be a positive int (T) or None (never resets); got {self.horizon!r}")

  def unroll(self, theta: Theta, state: State, keys: jax.Array) -> tuple[State, jax.Array]:
    """Runs ``len(keys)`` steps from ``state`` with fixed ``theta``, with no episode reset.

    Args:
      theta: the meta-parameters.
      state: the state to start from.
      keys: ``[num_steps]`` PRNG keys, one per step.

    Returns:
      ``(final_state, losses)`` with ``losses: [num_steps]``.
    """
    def body(s, k):
      s, loss = self.step(theta, s, k)
      return s, loss
    return jax.lax.scan(body, state, keys)

  def episode_losses(self, theta: Theta, key: PRNGKey, num_steps: int | None = None) -> jax.Array:
    """The per-step losses ``[num_steps]`` of one episode from a fresh state (``num_steps`` defaults to T)."""
    num_steps = self.horizon if num_steps is None else num_steps
    if num_steps is None:
      raise ConfigError("num_steps", f"system {self.name!r} never resets (horizon=None); pass num_steps")
    init_key, steps_key = jax.random.split(key)
    _, losses = self.unroll(theta, self.init(init_key), jax.random.split(steps_key, num_steps))
    return losses

  def mean_loss(self, theta: Theta, key: PRNGKey, num_episodes: int = 1,
                num_steps: int | None = None) -> jax.Array:
    """The full-unroll objective ``(1/T) sum_t L_t`` at ``theta`` (no smoothing), averaged over
    ``num_episodes`` independent episodes (vmapped). Differentiable in ``theta``."""
    keys = jax.random.split(key, num_episodes)
    losses = jax.vmap(lambda k: self.episode_losses(theta, k, num_steps))(keys)
    return jnp.mean(losses)
