"""Small unrolled systems built for tests: each makes one property easy to see."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import tasks


def linear_pytree(horizon: int = 24) -> tasks.UnrolledSystem:
  """Linear dynamics driven by a nested-dict theta, quadratic loss: every smoothing of it has the
  same gradient as the system itself (the Hessian in theta is constant).

  ``theta = {"drive": [3], "nested": {"gain": [2]}}``; state ``{"s": [3], "t": int32}``;
  ``s <- A s + drive + M gain cos(0.3 t)``, ``L = 0.5 |s - target|^2``.
  """
  A = jnp.asarray([[0.8, 0.1, 0.0], [0.0, 0.7, 0.2], [0.1, 0.0, 0.9]], jnp.float32)
  M = jnp.asarray([[1.0, 0.0], [0.5, -1.0], [0.0, 2.0]], jnp.float32)
  target = jnp.asarray([1.0, -0.5, 0.25], jnp.float32)

  def init(key):
    del key
    return {"s": jnp.zeros(3, jnp.float32), "t": jnp.zeros((), jnp.int32)}

  def step(theta, state, key):
    del key
    u = jnp.cos(0.3 * state["t"].astype(jnp.float32))
    s = A @ state["s"] + theta["drive"] + (M @ theta["nested"]["gain"]) * u
    return {"s": s, "t": state["t"] + 1}, 0.5 * jnp.sum((s - target) ** 2)

  theta0 = {"drive": jnp.asarray([0.3, -0.2, 0.1], jnp.float32),
            "nested": {"gain": jnp.asarray([0.2, -0.1], jnp.float32)}}
  return tasks.UnrolledSystem(init=init, step=step, horizon=horizon, theta0=theta0,
                              name="linear_pytree")


def recorder(horizon: int = 7) -> tasks.UnrolledSystem:
  """The state records its randomness and its own step count; theta never touches the state.

  ``state = {"t": steps since init, "init_draw": uniform(init key), "step_draw": uniform(last
  step key)}``; ``L = theta[0] * (1 + step_draw)``.
  """
  def init(key):
    return {"t": jnp.zeros((), jnp.int32), "init_draw": jax.random.uniform(key),
            "step_draw": jnp.zeros(())}

  def step(theta, state, key):
    draw = jax.random.uniform(key)
    new = {"t": state["t"] + 1, "init_draw": state["init_draw"], "step_draw": draw}
    return new, theta[0] * (1.0 + draw)

  return tasks.UnrolledSystem(init=init, step=step, horizon=horizon,
                              theta0=jnp.asarray([0.5], jnp.float32), name="recorder")


def theta_readout(horizon: int) -> tasks.UnrolledSystem:
  """``L_t = theta[0]``: the loss difference of a pair is exactly ``2 * eps_t`` (its noise)."""
  return tasks.UnrolledSystem(init=lambda key: jnp.zeros(()),
                              step=lambda theta, s, key: (s + 1.0, theta[0]),
                              horizon=horizon, theta0=jnp.asarray([0.0], jnp.float32),
                              name="theta_readout")


def nan_prone(horizon: int = 10, rate: float = 0.25) -> tasks.UnrolledSystem:
  """``L = (theta - 1)^2`` except NaN on steps whose key draw is below ``rate`` (for both
  particles of a pair, which share keys); the state counts the NaNs it emitted."""
  def init(key):
    del key
    return {"nans": jnp.zeros((), jnp.int32)}

  def step(theta, state, key):
    bad = jax.random.uniform(key) < rate
    loss = jnp.where(bad, jnp.nan, jnp.sum((theta - 1.0) ** 2))
    return {"nans": state["nans"] + bad.astype(jnp.int32)}, loss

  return tasks.UnrolledSystem(init=init, step=step, horizon=horizon,
                              theta0=jnp.zeros(2, jnp.float32), name="nan_prone")


def ar1(horizon: int, a: float = 0.5) -> tasks.UnrolledSystem:
  """A stationary scalar system: ``s <- a s + theta``, ``L = (s - 1)^2``; theta: [1].

  The gradient of each step's loss saturates within a few steps, so per-window gradients look
  alike at every position: what changes with ``T/W`` is only how noise is spread over windows.
  """
  def init(key):
    del key
    return jnp.zeros((), jnp.float32)

  def step(theta, s, key):
    del key
    s = a * s + theta[0]
    return s, (s - 1.0) ** 2

  return tasks.UnrolledSystem(init=init, step=step, horizon=horizon,
                              theta0=jnp.asarray([0.3], jnp.float32), name="ar1")


def replicate_estimates(est, theta, key, num_replicates: int):
  """``num_replicates`` independent (init + one estimate) runs at fixed theta, vmapped.

  Returns theta-like leaves ``[R, ...]`` as numpy arrays.
  """
  def one(k):
    k_init, k_est = jax.random.split(k)
    grad, _, _ = est.estimate(k_est, theta, est.init(k_init, theta))
    return grad
  grads = jax.jit(jax.vmap(one))(jax.random.split(key, num_replicates))
  return jax.tree.map(np.asarray, grads)


def flat(tree) -> np.ndarray:
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


def varying_length(min_length: int = 5, max_length: int = 11) -> tasks.UnrolledSystem:
  """Each episode draws its length uniformly from [min_length, max_length] at init; the state
  records that length and its own step count; ``L = theta[0] * (1 + t)``."""
  def init(key):
    length = jax.random.randint(key, (), min_length, max_length + 1, dtype=jnp.int32)
    return {"t": jnp.zeros((), jnp.int32), "length": length}

  def step(theta, state, key):
    del key
    return ({"t": state["t"] + 1, "length": state["length"]},
            theta[0] * (1.0 + state["t"].astype(jnp.float32)))

  return tasks.UnrolledSystem(init=init, step=step, horizon=max_length, min_horizon=min_length,
                              episode_length=lambda s: s["length"],
                              theta0=jnp.asarray([0.5], jnp.float32), name="varying_length")


def lookup(table_size: int = 1_000_000) -> tasks.UnrolledSystem:
  """A system that reads a large table (``data``): ``L = (theta . table[i] - 1)^2`` for a row
  ``i`` drawn from the step key; the table is 4 MB of float32."""
  table = jax.random.normal(jax.random.key(0), (table_size // 4, 4))

  def init(key, data):
    del key, data
    return jnp.zeros((), jnp.int32)

  def step(theta, count, key, data):
    row = data["table"][jax.random.randint(key, (), 0, data["table"].shape[0])]
    return count + 1, (jnp.dot(theta, row) - 1.0) ** 2

  return tasks.UnrolledSystem(init=init, step=step, horizon=20, data={"table": table},
                              theta0=jnp.zeros(4, jnp.float32), name="lookup")


def every_estimator(system: tasks.UnrolledSystem, N: int = 8, W: int = 3) -> dict:
  """One of each registered estimator on ``system``: ``N`` particles (TBPTT: ``N - 1``), windows
  of ``W`` (GPES: noise blocks of 2 steps), sigma 0.1."""
  from meta_train.estimators import GPES, NRES, PES, TBPTT, FullES, TruncatedES
  return {
      "nres": NRES(system, num_particles=N, sigma=0.1, unroll_length=W),
      "pes": PES(system, num_particles=N, sigma=0.1, unroll_length=W),
      "gpes": GPES(system, num_particles=N, sigma=0.1, unroll_length=W, K=2),
      "full_es": FullES(system, num_particles=N, sigma=0.1),
      "tes": TruncatedES(system, num_particles=N, sigma=0.1, unroll_length=W),
      "tbptt": TBPTT(system, num_particles=N - 1, unroll_length=W),
  }
