"""Physics of a locomotion task for compiled JAX code: MuJoCo's C engine or MJX, one interface.

Both backends keep a simulation as its ``mjSTATE_INTEGRATION`` row (time, qpos, qvel, act,
warm start, ctrl, ...: everything ``mj_step`` reads, so a restored row continues bit for bit) and
offer two pure, traceable functions on one simulation; ``vmap`` them over particles::

    physics = tasks.locomotion.physics.make("mujoco", spec)          # or "mjx"
    row, obs = physics.reset(qpos_noise, qvel_noise)       # [nq], [nv] float32 -> row, [obs_dim]
    out = physics.step(row, action)                        # a PhysicsStep: row, obs, reward, terminated

* ``"mujoco"`` (:class:`MujocoPhysics`, the default on CPU): the row is float64, kept exactly as
  ``uint32[nstate, 2]`` (the two words of each float64; JAX computes in float32 unless x64 is on).
  ``step`` is a ``jax.pure_callback`` into :class:`mujoco.batch.Batch`: every particle of the
  call (the callback is vmapped with ``vmap_method="broadcast_all"``, so a vmapped, scanned,
  jit-compiled or ``shard_map``-ped window makes one call per step per device) is stepped
  ``frame_skip`` times by the C engine on a thread pool, and the observation, reward and
  termination are computed in float64 on the host. Bit-identical to gymnasium's own environment.
* ``"mjx"`` (:class:`MjxPhysics`, for GPU/TPU): the same row as ``float32[nstate]``, stepped by
  ``mujoco.mjx`` inside the compiled program. It reads and writes the row's time, qpos, qvel,
  act, warm start and ctrl (the other components, zero for these tasks, are carried unchanged).

``step`` takes the raw action, as gymnasium's ``env.step``: it is written to ``ctrl`` unclipped
(the row keeps it so), both engines clamp the controls of the ``ctrllimited`` actuators to
``ctrl_range`` inside each physics step (MJX too, in its ``fwd_actuation``), and the reward
charges the control cost on the raw action.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lopt_meta.errors import unknown_name
from tasks.locomotion.environments import Locomotion, require

BACKENDS = ("mujoco", "mjx")


class PhysicsStep(NamedTuple):
  """One environment step of one simulation (leading batch axes under ``vmap``)."""
  row: jax.Array         # the new mjSTATE_INTEGRATION row
  obs: jax.Array         # float32[obs_dim], the observation after the step
  reward: jax.Array      # float32[], gymnasium's reward of the step
  terminated: jax.Array  # bool[], the episode ended (unhealthy Hopper / Walker2d)


class RowLayout(NamedTuple):
  """Where each component of the mjSTATE_INTEGRATION row lies: ``name -> slice``."""
  nstate: int
  slices: dict[str, slice]


def row_layout(model) -> RowLayout:
  """The offsets of the row's components (MuJoCo orders them by their ``mjtState`` bit)."""
  mujoco = require("mujoco")
  members = mujoco.mjtState.__members__
  integration = members["mjSTATE_INTEGRATION"].value
  bits = sorted((m.value, name) for name, m in members.items()
                if m.value and (m.value & (m.value - 1)) == 0 and m.value & integration)
  slices, offset = {}, 0
  for value, name in bits:
    size = mujoco.mj_stateSize(model, value)
    slices[name.removeprefix("mjSTATE_").lower()] = slice(offset, offset + size)
    offset += size
  return RowLayout(offset, slices)



class _Common:
  """What both backends share: the model, its row layout and the reset row."""

  def __init__(self, spec: Locomotion):
    mujoco = require("mujoco")
    self.spec = spec
    self.model = mujoco.MjModel.from_xml_path(spec.xml_path)
    self.model.opt.timestep = spec.timestep
    self.layout = row_layout(self.model)
    data = mujoco.MjData(self.model)
    mujoco.mj_resetData(self.model, data)
    self.reset_row = np.empty(self.layout.nstate, np.float64)
    mujoco.mj_getState(self.model, data, self.reset_row, mujoco.mjtState.mjSTATE_INTEGRATION)
    self.init_qpos = self.model.qpos0.copy()
    self.init_qvel = np.zeros(self.model.nv)
    self.nq, self.nv, self.nu = self.model.nq, self.model.nv, self.model.nu
    self.obs_dim = self.nq - spec.skipped_qpos + self.nv
    self.ctrl_range = np.asarray(self.model.actuator_ctrlrange, np.float32)  # [nu, 2]

  def qpos_qvel(self, rows):
    s = self.layout.slices
    return rows[..., s["qpos"]], rows[..., s["qvel"]]


class MujocoPhysics(_Common):
  """MuJoCo's C engine through a batched host callback (see the module docstring).

  Args:
    spec: the environment.
    threads: threads of the engine's pool (default: the CPUs this process may use).
  """

  name = "mujoco"

  def __init__(self, spec: Locomotion, *, threads: int | None = None):
    super().__init__(spec)
    self.threads = threads or len(os.sched_getaffinity(0))
    self._batches: dict[int, Any] = {}
    self._lock = threading.Lock()

  # -- host side (NumPy, float64) ------------------------------------------------------------

  def _batch(self, nsim: int):
    if nsim not in self._batches:
      batch = require("mujoco.batch")
      self._batches[nsim] = batch.Batch(self.model, nsim=nsim, nthread=min(self.threads, nsim))
    return self._batches[nsim]

  def host_reset(self, qpos_noise: np.ndarray, qvel_noise: np.ndarray):
    """``[..., nq]``, ``[..., nv]`` -> (``uint32[..., nstate, 2]`` rows, ``float32[..., obs]``)."""
    lead = qpos_noise.shape[:-1]
    rows = np.broadcast_to(self.reset_row, lead + (self.layout.nstate,)).copy()
    s = self.layout.slices
    rows[..., s["qpos"]] = self.init_qpos + np.asarray(qpos_noise, np.float64)
    rows[..., s["qvel"]] = self.init_qvel + np.asarray(qvel_noise, np.float64)
    obs = self.spec.observation(*self.qpos_qvel(rows), np)
    return _to_words(rows), obs.astype(np.float32)

  def host_step(self, words: np.ndarray, action: np.ndarray):
    """``uint32[..., nstate, 2]``, ``float32[..., nu]`` -> the new rows (same form) and the
    ``float32[..., obs]`` observation, ``float32[...]`` reward, ``bool[...]`` termination. The
    raw action goes to ``ctrl`` in float64 (``mj_step`` clamps it) and into the control cost."""
    lead = words.shape[:-2]
    rows = _from_words(words).reshape(-1, self.layout.nstate)
    action = np.asarray(action, np.float64).reshape(-1, self.nu)
    with self._lock:
      batch = self._batch(rows.shape[0])
      batch.state[...] = rows
      batch.bind("ctrl")[...] = action
      batch.step(nstep=self.spec.frame_skip)
      new = batch.state.copy()
    spec = self.spec
    qpos0, _ = self.qpos_qvel(rows)
    qpos, qvel = self.qpos_qvel(new)
    healthy = spec.healthy(qpos, qvel, np)
    reward = spec.reward(qpos0[:, 0], qpos[:, 0], action, healthy, np)
    obs = spec.observation(qpos, qvel, np)
    return (_to_words(new).reshape(lead + (self.layout.nstate, 2)),
            obs.astype(np.float32).reshape(lead + (self.obs_dim,)),
            reward.astype(np.float32).reshape(lead),
            spec.terminated(healthy, np).reshape(lead))

  # -- traced side -----------------------------------------------------------------------------

  def reset(self, qpos_noise: jax.Array, qvel_noise: jax.Array) -> tuple[jax.Array, jax.Array]:
    shapes = (jax.ShapeDtypeStruct((self.layout.nstate, 2), jnp.uint32),
              jax.ShapeDtypeStruct((self.obs_dim,), jnp.float32))
    return jax.pure_callback(self.host_reset, shapes, qpos_noise, qvel_noise,
                             vmap_method="broadcast_all")

  def step(self, row: jax.Array, action: jax.Array) -> PhysicsStep:
    shapes = PhysicsStep(jax.ShapeDtypeStruct((self.layout.nstate, 2), jnp.uint32),
                         jax.ShapeDtypeStruct((self.obs_dim,), jnp.float32),
                         jax.ShapeDtypeStruct((), jnp.float32),
                         jax.ShapeDtypeStruct((), jnp.bool_))
    out = jax.pure_callback(self.host_step, tuple(shapes), row, action,
                            vmap_method="broadcast_all")
    return PhysicsStep(*out)

  def rows_float64(self, row) -> np.ndarray:
    """The float64 rows of a state's ``physics`` leaf (on the host)."""
    return _from_words(np.asarray(row))


class MjxPhysics(_Common):
  """``mujoco.mjx`` inside the compiled program (see the module docstring)."""

  name = "mjx"

  def __init__(self, spec: Locomotion):
    super().__init__(spec)
    self.mjx = require("mujoco.mjx")
    self.mjx_model = self.mjx.put_model(self.model)

  def _data(self, row: jax.Array):
    s = self.layout.slices
    data = self.mjx.make_data(self.mjx_model)
    return data.replace(time=row[s["time"]][0], qpos=row[s["qpos"]], qvel=row[s["qvel"]],
                        act=row[s["act"]], qacc_warmstart=row[s["warmstart"]],
                        ctrl=row[s["ctrl"]])

  def _row(self, row: jax.Array, data) -> jax.Array:
    s = self.layout.slices
    for name, value in (("time", data.time[None]), ("qpos", data.qpos), ("qvel", data.qvel),
                        ("act", data.act), ("warmstart", data.qacc_warmstart),
                        ("ctrl", data.ctrl)):
      row = row.at[s[name]].set(value.astype(row.dtype))
    return row

  def reset(self, qpos_noise: jax.Array, qvel_noise: jax.Array) -> tuple[jax.Array, jax.Array]:
    s = self.layout.slices
    row = jnp.asarray(self.reset_row, jnp.float32)
    qpos = jnp.asarray(self.init_qpos, jnp.float32) + qpos_noise
    qvel = jnp.asarray(self.init_qvel, jnp.float32) + qvel_noise
    row = row.at[s["qpos"]].set(qpos).at[s["qvel"]].set(qvel)
    return row, self.spec.observation(qpos, qvel, jnp)

  def step(self, row: jax.Array, action: jax.Array) -> PhysicsStep:
    """One environment step under the raw ``action`` (``mjx.step`` clamps ``ctrl`` itself)."""
    data = self._data(row).replace(ctrl=action.astype(jnp.float32))
    data = jax.lax.fori_loop(0, self.spec.frame_skip,
                             lambda _, d: self.mjx.step(self.mjx_model, d), data)
    spec = self.spec
    healthy = spec.healthy(data.qpos, data.qvel, jnp)
    reward = spec.reward(row[self.layout.slices["qpos"]][0], data.qpos[0], action, healthy, jnp)
    return PhysicsStep(self._row(row, data), spec.observation(data.qpos, data.qvel, jnp),
                       reward.astype(jnp.float32), spec.terminated(healthy, jnp))

  def rows_float64(self, row) -> np.ndarray:
    return np.asarray(row, np.float64)


def _to_words(rows: np.ndarray) -> np.ndarray:
  """float64 ``[..., n]`` -> its exact ``uint32[..., n, 2]`` words."""
  rows = np.ascontiguousarray(rows, np.float64)
  return rows.view(np.uint32).reshape(rows.shape + (2,))


def _from_words(words: np.ndarray) -> np.ndarray:
  """``uint32[..., n, 2]`` -> float64 ``[..., n]``."""
  words = np.ascontiguousarray(words, np.uint32)
  return words.reshape(words.shape[:-2] + (-1,)).view(np.float64)


@functools.lru_cache(maxsize=None)
def make(backend: str, spec: Locomotion) -> MujocoPhysics | MjxPhysics:
  """The physics of ``spec`` on ``backend`` (``"mujoco"`` or ``"mjx"``); one per pair."""
  if backend == "mujoco":
    return MujocoPhysics(spec)
  if backend == "mjx":
    return MjxPhysics(spec)
  raise unknown_name("backend", backend, BACKENDS)
