"""The papers' small unrolled systems: toy 2-D regression, influence balancing and Lorenz.

* ``toy2d``: ES-Single paper (Vicol, Sohl-Dickstein & Metz, ICML 2023; Appendix C and listing H),
  after the PES paper (Vicol, Metz & Sohl-Dickstein, ICML 2021, arXiv:2112.13835): learn a linearly
  interpolated learning-rate schedule for gradient descent on a 2-D function with one global and many local minima.
* ``influence_balancing``: Tallec & Ollivier 2017 as used by PES / ES-Single: a linear system in
  which theta helps the loss in the long run but hurts it over short truncations. Never resets.
* ``lorenz``: NRES paper (Li et al. 2023, arXiv:2304.12180): recover the Lorenz parameters
  ``theta = (ln a, ln r)`` from the z coordinate of a ground-truth trajectory, explicit Euler.

Each factory takes keyword-only overrides with the papers' settings as defaults and returns a
:class:`tasks.UnrolledSystem`. Convention in all three: ``step`` advances the state and returns the
loss of the *new* state, as the papers' code does.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from lopt_meta.errors import ConfigError
from lopt_meta.prng import as_typed_key
from tasks.base import UnrolledSystem


def _positive(field: str, value, *, integer: bool = False):
  ok = value > 0 and (not integer or (isinstance(value, int) and not isinstance(value, bool)))
  if not ok:
    raise ConfigError(field, f"must be a positive {'int' if integer else 'number'}; got {value!r}")
  return value


# --------------------------------------------------------------------------------------------
# toy 2-D regression
# --------------------------------------------------------------------------------------------

def toy2d_inner_loss(x: jax.Array) -> jax.Array:
  """``f(x0, x1) = sqrt(x0^2 + 5) - sqrt(5) + sin(x1)^2 exp(-5 x0^2) + 0.25 |x1 - 100|``.

  One global minimum at (0, 100); ripples in x1 make many local minima (ES-Single paper, eq. 9).
  """
  return (jnp.sqrt(x[0] ** 2 + 5.0) - jnp.sqrt(5.0) + jnp.sin(x[1]) ** 2 * jnp.exp(-5.0 * x[0] ** 2)
          + 0.25 * jnp.abs(x[1] - 100.0))


def toy2d(*, horizon: int = 100, x0: tuple[float, float] = (1.0, 1.0),
          theta0: tuple[float, float] = (math.log(0.01), math.log(0.01))) -> UnrolledSystem:
  """Learning-rate schedule for gradient descent on :func:`toy2d_inner_loss`.

  State ``(x: [2], t: int32)``. Step ``t`` uses the learning rate
  ``lr_t = (1 - t/T) exp(theta[0]) + (t/T) exp(theta[1])``, takes ``x <- x - lr_t grad f(x)`` and
  returns ``f(x)`` of the new ``x``. ``theta: [2] = (log initial lr, log final lr)``. The papers
  report the summed loss ``sum_t L_t`` (about 2490 at ``theta0``); our objective is the mean,
  ``T`` times smaller.
  """
  T = _positive("horizon", horizon, integer=True)
  x_init = jnp.asarray(x0, jnp.float32)
  grad_f = jax.grad(toy2d_inner_loss)

  def init(key):
    del key  # deterministic start
    return {"x": x_init, "t": jnp.zeros((), jnp.int32)}

  def step(theta, state, key):
    del key
    frac = state["t"].astype(jnp.float32) / T
    lr = (1.0 - frac) * jnp.exp(theta[0]) + frac * jnp.exp(theta[1])
    x = state["x"] - lr * grad_f(state["x"])
    return {"x": x, "t": state["t"] + 1}, toy2d_inner_loss(x)

  return UnrolledSystem(init=init, step=step, horizon=T, theta0=jnp.asarray(theta0, jnp.float32),
                        name="toy2d")


# --------------------------------------------------------------------------------------------
# influence balancing
# --------------------------------------------------------------------------------------------

def influence_balancing_matrices(n: int, p: int, diag: float, offdiag: float):
  """``A: [n, n]`` with ``A_ii = diag``, ``A_{i,i+1} = offdiag``; ``b: [n]``, p ones then n-p minus ones."""
  A = np.diag(np.full(n, diag)) + np.diag(np.full(n - 1, offdiag), k=1)
  b = np.concatenate([np.ones(p), -np.ones(n - p)])
  return jnp.asarray(A, jnp.float32), jnp.asarray(b, jnp.float32)


def influence_balancing(*, n: int = 23, p: int = 10, diag: float = 0.5, offdiag: float = 0.5,
                        s0: float = 1.0, theta0: float = 0.5,
                        horizon: int | None = None) -> UnrolledSystem:
  """``s_{t+1} = A s_t + theta b``, ``L_t = 0.5 (s_{t+1}[0] - 1)^2``; ``theta: [1]``.

  In the steady state ``s[0] = 2 theta (2p - n)``, so with the defaults the optimum is
  ``theta* = -1/6``; truncations of a few steps only see the +1 entries of ``b`` and push theta
  the wrong way. ``horizon=None`` (the default, as in the papers) never resets; pass an int to
  get episodes of that length (a linear system with a quadratic loss, handy for exact checks).
  """
  _positive("n", n, integer=True)
  if not (isinstance(p, int) and 0 <= p <= n):
    raise ConfigError("p", f"must be an int in [0, n={n}]; got {p!r}")
  if horizon is not None:
    _positive("horizon", horizon, integer=True)
  A, b = influence_balancing_matrices(n, p, diag, offdiag)
  s_init = jnp.full((n,), s0, jnp.float32)

  def init(key):
    del key
    return s_init

  def step(theta, s, key):
    del key
    s = A @ s + theta[0] * b
    return s, 0.5 * (s[0] - 1.0) ** 2

  return UnrolledSystem(init=init, step=step, horizon=horizon,
                        theta0=jnp.asarray([theta0], jnp.float32), name="influence_balancing")


# --------------------------------------------------------------------------------------------
# Lorenz
# --------------------------------------------------------------------------------------------

LORENZ_START = (1.2, 1.3, 1.6)


def lorenz_euler_step(xyz: jax.Array, a, r, b, dt: float) -> jax.Array:
  """One explicit Euler step of the Lorenz system; ``xyz: [3]``."""
  x, y, z = xyz[0], xyz[1], xyz[2]
  return jnp.stack([x + a * (y - x) * dt,
                    y + ((r - z) * x - y) * dt,
                    z + (x * y - b * z) * dt])


def lorenz(*, horizon: int = 2000, dt: float = 0.005, a_true: float = 10.0, r_true: float = 28.0,
           b: float = 8.0 / 3.0, a0: float = 22.56, r0: float = 40.45,
           start: tuple[float, float, float] = LORENZ_START, init_sigma: float = 0.0) -> UnrolledSystem:
  """Fit ``theta = (ln a, ln r)`` of a Lorenz system to a ground-truth trajectory (a=10, r=28).

  State ``{"xyz": [3], "xyz_true": [3]}``: the model trajectory under ``exp(theta)`` and the
  ground truth, integrated alongside with the same explicit Euler step (``dt``, fixed ``b=8/3``).
  ``L_t = (z_t - z_t^true)^2`` on the new state. Episodes start at ``start`` plus
  ``init_sigma * N(0, I)`` (the key chooses the perturbation; both trajectories start there); the
  NRES paper trains from the single start (``init_sigma=0``) and tests on ``init_sigma=1``.
  ``theta0 = (ln 22.56, ln 40.45)``.
  """
  T = _positive("horizon", horizon, integer=True)
  _positive("dt", dt)
  if init_sigma < 0:
    raise ConfigError("init_sigma", f"must be >= 0; got {init_sigma!r}")
  start_xyz = jnp.asarray(start, jnp.float32)

  def init(key):
    xyz = start_xyz
    if init_sigma > 0:  # a static choice: the single-start system draws no random numbers
      xyz = xyz + init_sigma * jax.random.normal(as_typed_key(key), (3,))
    return {"xyz": xyz, "xyz_true": xyz}

  def step(theta, state, key):
    del key
    a, r = jnp.exp(theta[0]), jnp.exp(theta[1])
    xyz = lorenz_euler_step(state["xyz"], a, r, b, dt)
    xyz_true = lorenz_euler_step(state["xyz_true"], a_true, r_true, b, dt)
    return {"xyz": xyz, "xyz_true": xyz_true}, (xyz[2] - xyz_true[2]) ** 2

  theta0 = jnp.asarray([math.log(a0), math.log(r0)], jnp.float32)
  return UnrolledSystem(init=init, step=step, horizon=T, theta0=theta0, name="lorenz")
