"""Inner problems as unrolled systems, and their registry.

>>> import jax.numpy as jnp, tasks
>>> system = tasks.UnrolledSystem(init=lambda key: jnp.zeros(2),
...                               step=lambda theta, s, key: (s + theta, jnp.sum(s ** 2)),
...                               horizon=10)
>>> tasks.get("toy2d").horizon
100
"""

from tasks.base import PRNGKey, State, Theta, UnrolledSystem
from tasks.dynamical import influence_balancing, lorenz, toy2d
from tasks.registry import TASKS, get, override_names, register

__all__ = [
    "PRNGKey", "State", "Theta", "UnrolledSystem",
    "TASKS", "get", "override_names", "register",
    "influence_balancing", "lorenz", "toy2d",
]
