"""Inner problems as unrolled systems, and their registries.

``TASKS`` holds unrolled systems (the papers' dynamical systems, policy learning, hyperparameter
optimization); ``INNER_TASKS`` holds training
problems for learned optimizers (``learned_optimizer_system`` turns one, with a learned optimizer,
into an unrolled system over the optimizer's meta-parameters).

>>> import jax.numpy as jnp, tasks
>>> system = tasks.UnrolledSystem(init=lambda key: jnp.zeros(2),
...                               step=lambda theta, s, key: (s + theta, jnp.sum(s ** 2)),
...                               horizon=10)
>>> tasks.get("toy2d").horizon
100
"""

from tasks.base import PRNGKey, State, Theta, UnrolledSystem
from tasks.dynamical import influence_balancing, lorenz, toy2d
from tasks.inner import INNER_TASKS, InnerTask, get_inner_task
from tasks.hpo.paper_tasks import lr_decay_schedule, many_hparams
from tasks.hpo import Fraction, Logit, LogUniform, Uniform, hparam_system, optax_system
from tasks.locomotion.policy_learning import gym_mujoco, policy_system
from tasks.inner_training import META_LOSSES, TRUNCATIONS, Augmentation, InnerState, inner_training
from tasks.lopt_system import learned_optimizer_system
from tasks.distribution import (DISTRIBUTIONS, Distribution, DistributionSystem, Member,
                                get_distribution)
from tasks.registry import TASKS, get, override_names, register

__all__ = [
    "PRNGKey", "State", "Theta", "UnrolledSystem",
    "TASKS", "get", "override_names", "register",
    "influence_balancing", "lorenz", "toy2d",
    "gym_mujoco", "policy_system",
    "Fraction", "Logit", "LogUniform", "Uniform", "hparam_system", "optax_system",
    "lr_decay_schedule", "many_hparams",
    "INNER_TASKS", "InnerTask", "get_inner_task",
    "META_LOSSES", "TRUNCATIONS", "Augmentation", "InnerState", "inner_training",
    "learned_optimizer_system",
    "DISTRIBUTIONS", "Distribution", "DistributionSystem", "Member", "get_distribution",
]
