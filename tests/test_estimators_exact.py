"""Identities the maths makes exact: equal up to float rounding, not statistically.

The quick tier (``-m "not slow"``) checks every identity, NRES with W = T against FullES on
Lorenz's random initial conditions and GPES with K = T against NRES on step-unlocked workers; the
``slow`` cases add toy2d and the linear system with a pytree theta to the first, lockstep workers
to the second."""

import jax
import numpy as np
import pytest

import tasks
from meta_train.estimators import GPES, NRES, PES, FullES, TruncatedES
from tests import systems

KEY = jax.random.key(0)


def _close(a, b, rtol=2e-5, atol=1e-6):
  np.testing.assert_allclose(systems.flat(a), systems.flat(b), rtol=rtol, atol=atol)


@pytest.mark.parametrize("system", [
    tasks.get("lorenz", horizon=60, init_sigma=0.5),  # random initial conditions
    pytest.param(tasks.get("toy2d", horizon=30), marks=pytest.mark.slow),
    pytest.param(systems.linear_pytree(16), marks=pytest.mark.slow),
], ids=lambda s: s.name)
def test_nres_with_window_equal_to_horizon_is_full_es(system):
  theta = system.theta0
  nres = NRES(system, num_particles=12, sigma=0.05, unroll_length=system.horizon, lockstep=True)
  full = FullES(system, num_particles=12, sigma=0.05)
  ws = nres.init(jax.random.key(99), theta)
  for i in range(3):  # consecutive estimates: each NRES window is a fresh episode
    key = jax.random.fold_in(KEY, i)
    g_nres, ws, m_nres = nres.estimate(key, theta, ws)
    g_full, _, m_full = full.estimate(key, theta, None)
    _close(g_nres, g_full)
    np.testing.assert_allclose(m_nres["meta_loss"], m_full["meta_loss"], rtol=1e-5)
    assert jax.tree.structure(g_nres) == jax.tree.structure(theta)


@pytest.mark.parametrize("system", [tasks.get("lorenz", horizon=60), systems.linear_pytree(24)],
                         ids=lambda s: s.name)
def test_nres_averaged_over_an_episode_is_full_es(system):
  """Theta fixed, lockstep, W | T: the mean of the T/W window estimates of one episode equals
  the FullES estimate of that episode (same noise: drawn from the first window's key)."""
  W, theta = 6, system.theta0
  nres = NRES(system, num_particles=10, sigma=0.05, unroll_length=W, lockstep=True)
  ws = nres.init(KEY, theta)
  keys = [jax.random.fold_in(KEY, 100 + i) for i in range(system.horizon // W)]
  grads = []
  for key in keys:
    g, ws, _ = nres.estimate(key, theta, ws)
    grads.append(systems.flat(g))
  g_full, _, _ = FullES(system, num_particles=10, sigma=0.05).estimate(keys[0], theta, None)
  np.testing.assert_allclose(np.mean(grads, axis=0), systems.flat(g_full), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("lockstep", [pytest.param(True, marks=pytest.mark.slow), False])
def test_gpes_with_block_of_horizon_is_nres(lockstep):
  system = tasks.get("lorenz", horizon=50, init_sigma=0.3)
  a = NRES(system, num_particles=8, sigma=0.04, unroll_length=7, lockstep=lockstep)
  b = GPES(system, num_particles=8, sigma=0.04, unroll_length=7, K=50, lockstep=lockstep)
  wa, wb = a.init(KEY, system.theta0), b.init(KEY, system.theta0)
  for i in range(12):  # 84 steps: windows straddle episode boundaries
    key = jax.random.fold_in(KEY, i)
    ga, wa, _ = a.estimate(key, system.theta0, wa)
    gb, wb, _ = b.estimate(key, system.theta0, wb)
    _close(ga, gb, rtol=1e-4)  # 84 chaotic Lorenz steps amplify rounding (4e-5 seen)


def test_gpes_with_block_of_window_is_pes_in_lockstep():
  system = tasks.get("lorenz", horizon=40, init_sigma=0.3)
  a = PES(system, num_particles=8, sigma=0.04, unroll_length=8, lockstep=True)
  b = GPES(system, num_particles=8, sigma=0.04, unroll_length=8, K=8, lockstep=True)
  wa, wb = a.init(KEY, system.theta0), b.init(KEY, system.theta0)
  for i in range(12):
    key = jax.random.fold_in(KEY, i)
    ga, wa, _ = a.estimate(key, system.theta0, wa)
    gb, wb, _ = b.estimate(key, system.theta0, wb)
    _close(ga, gb)
    _close(wa.xi, wb.xi)


def test_nres_noise_switches_exactly_at_the_episode_boundary():
  """T=5, W=3, lockstep, L_t = theta: window 2 runs steps t=3, 4 of episode 1 (old noise e1)
  then t=0 of episode 2 (new noise e2), so g2 = (2 e1^2 + e2^2) / (3 sigma^2) per pair."""
  system, sigma = systems.theta_readout(horizon=5), 0.1
  est = NRES(system, num_particles=2, sigma=sigma, unroll_length=3, lockstep=True)
  theta = system.theta0
  g1, ws, _ = est.estimate(jax.random.key(1), theta, est.init(KEY, theta))
  e1 = float(ws.eps[0, 0])
  np.testing.assert_allclose(float(g1[0]), e1**2 / sigma**2, rtol=1e-5)
  g2, ws, m = est.estimate(jax.random.key(2), theta, ws)
  e2 = float(ws.eps[0, 0])
  assert e2 != e1 and int(m["resets"]) == 1
  np.testing.assert_allclose(float(g2[0]), (2 * e1**2 + e2**2) / (3 * sigma**2), rtol=1e-5)


def test_pes_accumulator_restarts_at_the_episode_boundary():
  """Same system: window 2 draws e2 at its start (xi = e1 + e2) for t=3, 4, then the new
  episode draws e3 and restarts xi = e3 for t=0."""
  system, sigma = systems.theta_readout(horizon=5), 0.1
  est = PES(system, num_particles=2, sigma=sigma, unroll_length=3, lockstep=True)
  theta = system.theta0
  g1, ws, _ = est.estimate(jax.random.key(1), theta, est.init(KEY, theta))
  e1 = float(ws.eps[0, 0])
  np.testing.assert_allclose(float(ws.xi[0, 0]), e1, rtol=1e-6)
  np.testing.assert_allclose(float(g1[0]), e1**2 / sigma**2, rtol=1e-5)
  # Recover e2 from a copy of the workers run only to the boundary (same keys => same draws).
  two = PES(system, num_particles=2, sigma=sigma, unroll_length=2, lockstep=True)
  _, ws_mid, _ = two.estimate(jax.random.key(2), theta, ws)
  e2 = float(ws_mid.eps[0, 0])
  np.testing.assert_allclose(float(ws_mid.xi[0, 0]), e1 + e2, rtol=1e-5)
  g2, ws, _ = est.estimate(jax.random.key(2), theta, ws)
  e3 = float(ws.eps[0, 0])
  np.testing.assert_allclose(float(ws.xi[0, 0]), e3, rtol=1e-6)
  expected = (2 * e2 * (e1 + e2) * 2 + 2 * e3 * e3) / (2 * sigma**2 * 3)
  np.testing.assert_allclose(float(g2[0]), expected, rtol=1e-5)


def test_truncated_es_shared_state_advances_under_theta():
  """TES's stored state after a window is the unperturbed branch's: W steps under theta."""
  system = tasks.get("lorenz", horizon=100)
  est = TruncatedES(system, num_particles=4, sigma=0.5, unroll_length=10, lockstep=True)
  theta = system.theta0
  ws = est.init(KEY, theta)
  _, ws, m = est.estimate(jax.random.key(3), theta, ws)
  _, ws, _ = est.estimate(jax.random.key(4), theta, ws)
  state, _ = system.unroll(theta, system.init(KEY), jax.random.split(KEY, 20))
  np.testing.assert_allclose(np.asarray(ws.states["xyz"][:, 0]),
                             np.broadcast_to(np.asarray(state["xyz"]), (2, 3)), rtol=1e-5)
  assert ws.t.tolist() == [20, 20]
