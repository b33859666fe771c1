"""Inner problems as unrolled systems, and the one task registry.

A registered task builds one of three kinds (:mod:`tasks.registry`): an unrolled system whose
theta is meta-trained directly (the papers' dynamical systems, policy learning, hyperparameter
optimization), an inner task that a learned optimizer trains (``learned_optimizer_system`` turns
one, with a learned optimizer, into an unrolled system over the optimizer's meta-parameters), or
a distribution of inner tasks. The package's own are listed in :mod:`tasks.catalog`.

>>> import jax.numpy as jnp, tasks
>>> system = tasks.UnrolledSystem(init=lambda key: jnp.zeros(2),
...                               step=lambda theta, s, key: (s + theta, jnp.sum(s ** 2)),
...                               horizon=10)
>>> tasks.get("toy2d").horizon
100
"""

from tasks.base import PRNGKey, State, Theta, UnrolledSystem
from tasks.dynamical import influence_balancing, lorenz, toy2d
from tasks.inner_task import InnerTask
from tasks.hpo.paper_tasks import lr_decay_schedule, many_hparams
from tasks.hpo import Fraction, Logit, LogUniform, Uniform, hparam_system, optax_system
from tasks.locomotion.policy_learning import gym_mujoco, policy_system
from tasks.inner_training import META_LOSSES, TRUNCATIONS, Augmentation, InnerState, inner_training
from tasks.lopt_system import learned_optimizer_system
from tasks.distribution import Distribution, DistributionSystem, Member
from tasks.registry import KINDS, TASKS, build, get, kind, names, options, register
from tasks import catalog  # noqa: F401  (registers the package's tasks)

__all__ = [
    "PRNGKey", "State", "Theta", "UnrolledSystem",
    "KINDS", "TASKS", "build", "get", "kind", "names", "options", "register",
    "influence_balancing", "lorenz", "toy2d",
    "gym_mujoco", "policy_system",
    "Fraction", "Logit", "LogUniform", "Uniform", "hparam_system", "optax_system",
    "lr_decay_schedule", "many_hparams",
    "InnerTask",
    "META_LOSSES", "TRUNCATIONS", "Augmentation", "InnerState", "inner_training",
    "learned_optimizer_system",
    "Distribution", "DistributionSystem", "Member",
]
