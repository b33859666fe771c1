"""Policy learning in MuJoCo as an unrolled system (NRES paper, section 6).

theta is a policy's parameter pytree; the inner state is one environment: its MuJoCo
``mjSTATE_INTEGRATION`` row (see :mod:`tasks.locomotion.physics`), the current observation, whether the
episode has terminated and, optionally, running observation statistics. One step is one
environment step of gymnasium's ``*-v5`` task (``frame_skip`` physics steps) under the raw
action ``policy(theta, obs)``, exactly as gymnasium's ``env.step(action)``: the action goes to
the physics unclipped (MuJoCo clamps the controls of its ``ctrllimited`` actuators to their
range inside the step) and the control cost ``ctrl_cost_weight * sum(action**2)`` is charged on
the raw action, so actions outside the control range cost more without moving the body more.
Its loss is ``-reward``, so the objective ``(1/T) sum_t L_t`` is minus the episode return over
``T``::

    system = tasks.get("swimmer")                  # linear policy from zero, T = 1000
    system = tasks.gym_mujoco("Hopper-v5", policy="mlp", backend="mjx")

The key of ``init`` draws gymnasium's reset noise (:func:`reset_noise`; both particles of a pair
share it); ``step`` uses no randomness. **Termination** (Hopper, Walker2d): the step that ends an
episode counts its reward; afterwards the particle's state stays frozen and its loss is exactly 0
until the horizon, so every episode is still ``T`` steps of a fixed function of theta and the
estimators' bookkeeping (and unbiasedness) is unchanged; the two particles of a pair may
terminate at different steps. Frozen steps are still counted as trajectory steps.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lopt_meta.errors import ConfigError, check_positive_int, unknown_name
from lopt_meta.prng import as_typed_key
from tasks.locomotion import physics as physics_lib
from tasks.base import UnrolledSystem
from tasks.locomotion.environments import Locomotion, from_gymnasium

POLICIES = ("linear", "mlp")
NORM_EPS = 1e-8


class LinearPolicy(nn.Module):
  """``a = W obs`` (no bias), the NRES paper's policy; ``W: [obs_dim, action_dim]``."""
  action_dim: int
  kernel_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, obs):
    return nn.Dense(self.action_dim, use_bias=False, kernel_init=self.kernel_init)(obs)


class MLPPolicy(nn.Module):
  """``a = W2 relu(W1 obs + b1) + b2`` with ``hidden`` units (``W1`` LeCun normal)."""
  action_dim: int
  hidden: int = 30
  output_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, obs):
    h = nn.relu(nn.Dense(self.hidden)(obs))
    return nn.Dense(self.action_dim, kernel_init=self.output_init)(h)


def policy_module(policy: str, action_dim: int, *, hidden: int = 30,
                  init_scale: float = 0.0) -> nn.Module:
  """The policy ``"linear"`` or ``"mlp"``. ``init_scale`` 0 initialises the weights of the
  output layer at zero (the policy starts at the zero action); a positive value draws them from
  a fan-in truncated normal of variance scale ``init_scale`` (``variance_scaling(init_scale,
  "fan_in", "truncated_normal")``). The MLP's hidden layer is LeCun normal."""
  if policy not in POLICIES:
    raise unknown_name("policy", policy, POLICIES)
  if not (isinstance(init_scale, (int, float)) and init_scale >= 0 and math.isfinite(init_scale)):
    raise ConfigError("init_scale", f"must be a number >= 0; got {init_scale!r}")
  init = (nn.initializers.zeros if init_scale == 0 else
          nn.initializers.variance_scaling(float(init_scale), "fan_in", "truncated_normal"))
  if policy == "linear":
    return LinearPolicy(action_dim, kernel_init=init)
  check_positive_int("hidden", hidden)
  return MLPPolicy(action_dim, hidden=hidden, output_init=init)


def _normalizer_update(stats: dict[str, jax.Array], obs: jax.Array) -> dict[str, jax.Array]:
  """Welford's running mean and sum of squared deviations, one observation more."""
  count = stats["count"] + 1.0
  delta = obs - stats["mean"]
  mean = stats["mean"] + delta / count
  return {"count": count, "mean": mean, "m2": stats["m2"] + delta * (obs - mean)}


def _normalize(stats: dict[str, jax.Array], obs: jax.Array) -> jax.Array:
  var = stats["m2"] / jnp.maximum(stats["count"], 1.0)
  return (obs - stats["mean"]) / jnp.sqrt(var + NORM_EPS)


def reset_noise(spec: Locomotion, nq: int, nv: int,
                key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """gymnasium's reset noise, drawn from ``key``: ``float32[nq]`` ``U(-s, s)`` for ``qpos`` and
  ``float32[nv]`` for ``qvel``: ``s N(0, 1)`` (HalfCheetah) or ``U(-s, s)``; ``s`` is
  ``spec.reset_noise_scale``. The physics adds them (in float64) to ``qpos0`` and zero."""
  scale = spec.reset_noise_scale
  k_pos, k_vel = jax.random.split(as_typed_key(key))
  qpos_noise = jax.random.uniform(k_pos, (nq,), minval=-scale, maxval=scale)
  if spec.qvel_noise == "normal":
    return qpos_noise, scale * jax.random.normal(k_vel, (nv,))
  return qpos_noise, jax.random.uniform(k_vel, (nv,), minval=-scale, maxval=scale)


def policy_system(spec: Locomotion, *, policy: str = "linear", hidden: int = 30,
                  init_scale: float = 0.0, backend: str = "mujoco", horizon: int = 1000,
                  obs_norm: bool = False, policy_seed: int = 0,
                  name: str | None = None) -> UnrolledSystem:
  """The unrolled system of learning a policy for ``spec`` (see the module docstring).

  Args:
    spec: the environment (:func:`tasks.locomotion.environments.from_gymnasium`).
    policy: ``"linear"`` (no bias) or ``"mlp"`` (one hidden ReLU layer of ``hidden`` units).
    init_scale: see :func:`policy_module` (0: zeros).
    backend: ``"mujoco"`` (C engine, host callback: not differentiable, so ES estimators only) or
      ``"mjx"`` (JAX-native; truncated backprop works through it).
    horizon: ``T``, environment steps per episode.
    obs_norm: normalise observations by running statistics of the particle's own episode so far
      (updated with each observation before it is used); off by default, as the paper.
    policy_seed: the key of theta0's draw (when ``init_scale > 0``).

  State: ``{"physics": row, "obs": float32[obs_dim], "done": bool[]}`` plus ``"norm"``
  (``count``, ``mean``, ``m2``) with ``obs_norm``.
  """
  check_positive_int("horizon", horizon, "T")
  if backend not in physics_lib.BACKENDS:
    raise unknown_name("backend", backend, physics_lib.BACKENDS)
  policy_module(policy, 1, hidden=hidden, init_scale=init_scale)  # checks before the model loads
  physics = physics_lib.make(backend, spec)
  module = policy_module(policy, physics.nu, hidden=hidden, init_scale=init_scale)
  theta0 = module.init(jax.random.key(policy_seed), jnp.zeros((physics.obs_dim,)))["params"]

  def init(key):
    row, obs = physics.reset(*reset_noise(spec, physics.nq, physics.nv, key))
    state = {"physics": row, "obs": obs, "done": jnp.zeros((), bool)}
    if obs_norm:
      zeros = jnp.zeros((physics.obs_dim,))
      state["norm"] = {"count": jnp.zeros(()), "mean": zeros, "m2": zeros}
    return state

  def step(theta, state, key):
    del key  # the dynamics are deterministic
    obs = state["obs"]
    new = {}
    if obs_norm:
      new["norm"] = _normalizer_update(state["norm"], obs)
      obs = _normalize(new["norm"], obs)
    action = module.apply({"params": theta}, obs)  # raw, as gymnasium's env.step takes it
    out = physics.step(state["physics"], action)
    done = state["done"]
    new.update(physics=jnp.where(done, state["physics"], out.row),
               obs=jnp.where(done, state["obs"], out.obs), done=done | out.terminated)
    if obs_norm:
      new["norm"] = jax.tree.map(lambda a, b: jnp.where(done, a, b), state["norm"], new["norm"])
    return new, jnp.where(done, 0.0, -out.reward)

  return UnrolledSystem(init=init, step=step, horizon=horizon, theta0=theta0,
                        name=name or spec.gym_id, loss_is_negative_reward=True,
                        differentiable=backend == "mjx")


def gym_mujoco(env: str, *, policy: str = "linear", hidden: int = 30, init_scale: float = 0.0,
               backend: str = "mujoco", horizon: int = 1000, obs_norm: bool = False,
               policy_seed: int = 0, env_options: dict[str, Any] | None = None,
               name: str | None = None) -> UnrolledSystem:
  """Policy learning on gymnasium's MuJoCo environment ``env`` (``"Swimmer-v5"``,
  ``"HalfCheetah-v5"``, ``"Hopper-v5"``, ``"Walker2d-v5"``), made with ``env_options`` (its
  keyword arguments, e.g. ``{"ctrl_cost_weight": 0.2}``). See :func:`policy_system`."""
  if env_options is not None and not isinstance(env_options, dict):
    raise ConfigError("env_options", f"must be a mapping of gymnasium keyword arguments; got "
                      f"{env_options!r}")
  spec, _ = from_gymnasium(env, **(env_options or {}))
  return policy_system(spec, policy=policy, hidden=hidden, init_scale=init_scale,
                       backend=backend, horizon=horizon, obs_norm=obs_norm,
                       policy_seed=policy_seed, name=name)


# The registered tasks: the NRES paper's two (Swimmer from zero; HalfCheetah drawn with scale 0.03)
# and the two that can terminate.
swimmer = functools.partial(gym_mujoco, "Swimmer-v5", name="swimmer")
halfcheetah = functools.partial(gym_mujoco, "HalfCheetah-v5", init_scale=0.03, name="halfcheetah")
hopper = functools.partial(gym_mujoco, "Hopper-v5", name="hopper")
walker2d = functools.partial(gym_mujoco, "Walker2d-v5", name="walker2d")
REGISTERED = {"swimmer": swimmer, "halfcheetah": halfcheetah, "hopper": hopper,
              "walker2d": walker2d}
