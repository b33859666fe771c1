"""gymnasium's MuJoCo locomotion tasks (v5) as arrays: observation, reward, termination, reset.

A :class:`Locomotion` holds what defines one of gymnasium's ``*-v5`` environments besides its
physics: the model file, the frame skip, the weights of the reward terms, the healthy ranges and
the reset noise, read from gymnasium's own environment object (so keyword overrides such as
``ctrl_cost_weight=0.2`` mean what they mean there). Its functions compute, from ``qpos`` and
``qvel`` before and after a step, the same observation, reward and termination as gymnasium, in
NumPy on the host (float64, as gymnasium) or in ``jax.numpy`` (the MJX backend): each takes the
array module ``xp`` and works on any leading batch shape.

The four supported families (``LOCOMOTION``): Swimmer, HalfCheetah, Hopper and Walker2d. Ant and
Humanoid read contact forces and centres of mass that the state does not hold; they are not
supported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import sys
from typing import Any

from lopt_meta.errors import ConfigError

# gymnasium id -> family; the family fixes the formulas, the environment object the constants
LOCOMOTION = {"Swimmer": "swimmer", "HalfCheetah": "halfcheetah", "Hopper": "hopper",
              "Walker2d": "walker2d"}
INSTALL_HINT = "pip install 'lopt-meta[rl]' (mujoco, mujoco-mjx and gymnasium[mujoco])"


def require(module: str):
  """Imports ``module`` (mujoco, gymnasium, mujoco.mjx) or raises a ConfigError saying how to
  install the RL extra."""
  try:
    if module == "mujoco.mjx" and module not in sys.modules:
      # mjx prints a line per optional GPU backend (warp) it does not find: not our user's concern
      with contextlib.redirect_stdout(io.StringIO()):
        return importlib.import_module(module)
    return importlib.import_module(module)
  except ImportError as e:
    raise ConfigError("task", f"policy-learning tasks need {module!r} ({e}); install it with: "
                      f"{INSTALL_HINT}") from None


@dataclasses.dataclass(frozen=True)
class Locomotion:
  """One gymnasium MuJoCo locomotion environment (v5), as constants.

  Attributes:
    gym_id: the gymnasium id, e.g. ``"HalfCheetah-v5"``.
    family: ``"swimmer"``, ``"halfcheetah"``, ``"hopper"`` or ``"walker2d"``.
    xml_path: the model file gymnasium loads.
    frame_skip: physics steps per environment step.
    timestep: the model's physics timestep; ``dt = timestep * frame_skip``.
    forward_reward_weight, ctrl_cost_weight: reward ``w_f * x_velocity (+ healthy) - w_c * |a|^2``
      (``a`` the raw action).
    reset_noise_scale: the reset noise ``s``: ``qpos0 + U(-s, s)``; ``qvel0 + U(-s, s)`` or, for
      HalfCheetah, ``qvel0 + s * N(0, 1)``.
    qvel_noise: ``"uniform"`` or ``"normal"`` (HalfCheetah), the distribution of the velocity noise.
    skipped_qpos: leading ``qpos`` entries left out of the observation (x; x and y for Swimmer).
    velocity_clip: Hopper and Walker2d clip ``qvel`` to ``+-10`` in the observation.
    healthy_reward: reward per step while healthy (Hopper, Walker2d).
    terminate_when_unhealthy: an unhealthy state ends the episode.
    healthy_z_range, healthy_angle_range: open intervals for ``qpos[1]`` and ``qpos[2]``.
    healthy_state_range: Hopper: every entry of ``(qpos[2:], qvel)`` in this open interval.
  """

  gym_id: str
  family: str
  xml_path: str
  frame_skip: int
  timestep: float
  forward_reward_weight: float
  ctrl_cost_weight: float
  reset_noise_scale: float
  skipped_qpos: int
  qvel_noise: str = "uniform"
  velocity_clip: float | None = None
  healthy_reward: float = 0.0
  terminate_when_unhealthy: bool = False
  healthy_z_range: tuple[float, float] | None = None
  healthy_angle_range: tuple[float, float] | None = None
  healthy_state_range: tuple[float, float] | None = None

  @property
  def dt(self) -> float:
    return self.timestep * self.frame_skip

  @property
  def can_terminate(self) -> bool:
    return self.terminate_when_unhealthy and self.healthy_z_range is not None

  def observation(self, qpos, qvel, xp) -> Any:
    """``[..., nq - skipped_qpos + nv]``: ``qpos`` without the first ``skipped_qpos`` entries,
    then ``qvel`` (clipped for Hopper and Walker2d)."""
    if self.velocity_clip is not None:
      qvel = xp.clip(qvel, -self.velocity_clip, self.velocity_clip)
    return xp.concatenate([qpos[..., self.skipped_qpos:], qvel], axis=-1)

  def healthy(self, qpos, qvel, xp) -> Any:
    """``[...]`` bool: the state after a step is healthy (always true without healthy ranges)."""
    ok = xp.ones(qpos.shape[:-1], bool)
    if self.healthy_z_range is not None:
      lo, hi = self.healthy_z_range
      ok = ok & (lo < qpos[..., 1]) & (qpos[..., 1] < hi)
    if self.healthy_angle_range is not None:
      lo, hi = self.healthy_angle_range
      ok = ok & (lo < qpos[..., 2]) & (qpos[..., 2] < hi)
    if self.healthy_state_range is not None:
      lo, hi = self.healthy_state_range
      state = xp.concatenate([qpos[..., 2:], qvel], axis=-1)
      ok = ok & xp.all((lo < state) & (state < hi), axis=-1)
    return ok

  def reward(self, x_before, x_after, action, healthy, xp) -> Any:
    """``[...]``: ``(w_f (x_after - x_before) / dt + healthy_reward * healthy) - w_c sum(a^2)``,
    in gymnasium's order of operations (``x`` is ``qpos[0]``, the forward position). ``action``
    is the raw action, as gymnasium's ``env.step`` received it: the control cost is charged on
    it even where it lies outside the control range (which MuJoCo clamps it to for the physics)."""
    x_velocity = (x_after - x_before) / self.dt
    reward = self.forward_reward_weight * x_velocity
    if self.healthy_reward:
      reward = reward + self.healthy_reward * healthy
    return reward - self.ctrl_cost_weight * xp.sum(action * action, axis=-1)

  def terminated(self, healthy, xp) -> Any:
    """``[...]`` bool: the episode ends after this step."""
    if not self.terminate_when_unhealthy:
      return xp.zeros(healthy.shape, bool)
    return ~healthy


def make_gym_env(gym_id: str, **kwargs):
  """gymnasium's environment ``gym_id`` (its ``.unwrapped``), for the constants and for tests."""
  gym = require("gymnasium")
  require("mujoco")
  try:
    return gym.make(gym_id, **kwargs).unwrapped
  except gym.error.Error as e:
    raise ConfigError("env", f"gymnasium has no environment {gym_id!r} ({e})") from None
  except TypeError as e:
    raise ConfigError("env_option", f"{gym_id}: {e}") from None


def family_of(gym_id: str) -> str:
  """``"HalfCheetah-v5"`` -> ``"halfcheetah"``; raises ConfigError for an unsupported id."""
  name, _, version = gym_id.rpartition("-")
  if name not in LOCOMOTION or version != "v5":
    allowed = ", ".join(f"{n}-v5" for n in LOCOMOTION)
    raise ConfigError("env", f"unsupported environment {gym_id!r}; supported: {allowed}")
  return LOCOMOTION[name]


def from_gymnasium(gym_id: str, **kwargs) -> tuple[Locomotion, Any]:
  """The :class:`Locomotion` of gymnasium's ``gym_id`` made with ``kwargs`` (e.g.
  ``ctrl_cost_weight=0.2``), and the environment object it was read from."""
  family = family_of(gym_id)
  env = make_gym_env(gym_id, **kwargs)
  if not getattr(env, "_exclude_current_positions_from_observation", True):
    raise ConfigError("env_option", "exclude_current_positions_from_observation=False is not "
                      "supported (the policy would see the unbounded x position)")
  common = dict(
      gym_id=gym_id, family=family, xml_path=env.fullpath, frame_skip=int(env.frame_skip),
      timestep=float(env.model.opt.timestep),
      forward_reward_weight=float(env._forward_reward_weight),
      ctrl_cost_weight=float(env._ctrl_cost_weight),
      reset_noise_scale=float(env._reset_noise_scale),
      skipped_qpos=2 if family == "swimmer" else 1,
      qvel_noise="normal" if family == "halfcheetah" else "uniform")
  if family in ("hopper", "walker2d"):
    common.update(
        velocity_clip=10.0, healthy_reward=float(env._healthy_reward),
        terminate_when_unhealthy=bool(env._terminate_when_unhealthy),
        healthy_z_range=tuple(map(float, env._healthy_z_range)),
        healthy_angle_range=tuple(map(float, env._healthy_angle_range)))
    if family == "hopper":
      common["healthy_state_range"] = tuple(map(float, env._healthy_state_range))
  return Locomotion(**common), env
