"""The window engine against NRES, PES and GPES_K written from the papers' equations.

The reference below is a plain Python loop over pairs and steps (no workers code): each pair
keeps its two states ``s+`` (theta + eps) and ``s-`` (theta - eps), its noise ``eps`` and, for
PES/GPES_K, its credit ``xi``; at the first step of an episode both states are reset and fresh
noise is drawn; PES draws again at every window's first step and GPES_K at every step whose
position in the episode is a multiple of K, adding the draw to ``xi``; NRES reuses its one draw
for the episode. Each step adds ``(L+ - L-) * credit`` to the pair's sum, and

    g = 1 / (2 sigma^2 P W) * sum_i sum_t (L+_{i,t} - L-_{i,t}) * credit_{i,t}.

Keys follow the documented scheme: window key -> ``split(key, P)`` -> ``fold_in(pair_key, 3 j + c)``
at window step ``j`` for the reset (c=0), noise (c=1) and step (c=2) keys.

With T=5 and W=3 windows straddle episode boundaries; the pairs start from the engine's own
step-unlocked workers, so they sit at different positions. Positions must agree exactly; states,
noise, credits and the estimate to float rounding (vectorized and scalar code may round a last
bit differently, and the engine sums a segment's loss differences before multiplying by its
credit where the reference multiplies step by step).

The quick tier (``-m "not slow"``) checks NRES and GPES_K (whose noise blocks need not start at a
window); the ``slow`` case adds PES, which is GPES_K with one block per window (checked exactly
against PES in lockstep by tests/test_estimators_exact.py, quick).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import tasks
from meta_train.estimators import GPES, NRES, PES

T, W, SIGMA, PAIRS, K = 5, 3, 0.3, 4, 2


def _system() -> tasks.UnrolledSystem:
  """A random initial state, random forcing each step, a pytree theta in the dynamics and loss."""
  def init(key):
    return {"s": jax.random.normal(key, (2,), jnp.float32)}

  def step(theta, state, key):
    s = 0.9 * state["s"] + theta["a"] * jax.random.normal(key, (2,), jnp.float32) + theta["b"]
    return {"s": s}, jnp.sum(s ** 2) + theta["b"][0] * s[1]

  theta0 = {"a": jnp.asarray([0.5, -0.3], jnp.float32), "b": jnp.asarray([0.1, 0.2], jnp.float32)}
  return tasks.UnrolledSystem(init=init, step=step, horizon=T, theta0=theta0, name="forced")


def _reference_window(system, theta, ws, key, kind):
  """One window of ``kind`` ("nres", "pes", "gpes") from the equations; returns the estimate and
  each pair's new ``(t, s+, s-, eps, xi)``."""
  flat_theta, unravel = ravel_pytree(theta)
  init, step = jax.jit(system.init), jax.jit(system.step)
  pair_keys = jax.random.split(key, PAIRS)
  gsum, pairs = jnp.zeros_like(flat_theta), []
  for i in range(PAIRS):
    t = int(ws.t[i])
    s_pos = jax.tree.map(lambda x: x[i, 0], ws.states)
    s_neg = jax.tree.map(lambda x: x[i, 1], ws.states)
    eps = ravel_pytree(jax.tree.map(lambda x: x[i], ws.eps))[0]
    xi = None if ws.xi is None else ravel_pytree(jax.tree.map(lambda x: x[i], ws.xi))[0]
    for j in range(W):
      reset_key, noise_key, step_key = (jax.random.fold_in(pair_keys[i], 3 * j + c)
                                        for c in range(3))
      draw = lambda: SIGMA * jax.random.normal(noise_key, flat_theta.shape, flat_theta.dtype)
      if t == 0:  # a new episode: fresh states, fresh noise, the credit restarts
        s_pos = s_neg = init(reset_key)
        eps = draw()
        xi = eps
      elif (kind == "pes" and j == 0) or (kind == "gpes" and t % K == 0):  # a new noise block
        eps = draw()
        xi = xi + eps
      s_pos, loss_pos = step(unravel(flat_theta + eps), s_pos, step_key)
      s_neg, loss_neg = step(unravel(flat_theta - eps), s_neg, step_key)
      gsum = gsum + (loss_pos - loss_neg) * (eps if kind == "nres" else xi)
      t = (t + 1) % T
    pairs.append((t, s_pos, s_neg, eps, xi))
  return unravel(gsum / (2 * SIGMA ** 2 * PAIRS * W)), pairs


@pytest.mark.parametrize("kind", ["nres", pytest.param("pes", marks=pytest.mark.slow), "gpes"])
def test_engine_matches_the_reference_loop(kind):
  system = _system()
  theta = system.theta0
  make = {"nres": NRES, "pes": PES, "gpes": functools.partial(GPES, K=K)}[kind]
  est = make(system, num_particles=2 * PAIRS, sigma=SIGMA, unroll_length=W)
  ws = est.init(jax.random.key(3), theta)
  assert len(set(np.asarray(ws.t).tolist())) > 1  # the pairs sit at different positions
  straddled = 0
  for k in range(2 * T):  # every pair crosses at least three episode boundaries
    key = jax.random.key(100 + k)
    want_grad, want = _reference_window(system, theta, ws, key, kind)
    before = np.asarray(ws.t)
    grad, ws, _ = est.estimate(key, theta, ws)
    straddled += int(np.sum((before > 0) & (before + W > T)))
    for i, (t, s_pos, s_neg, eps, xi) in enumerate(want):
      assert int(ws.t[i]) == t
      np.testing.assert_allclose(ws.states["s"][i, 0], s_pos["s"], rtol=1e-6, atol=1e-7)
      np.testing.assert_allclose(ws.states["s"][i, 1], s_neg["s"], rtol=1e-6, atol=1e-7)
      close = functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7)
      close(ravel_pytree(jax.tree.map(lambda x: x[i], ws.eps))[0], eps)
      if kind != "nres":
        close(ravel_pytree(jax.tree.map(lambda x: x[i], ws.xi))[0], xi)
    for got, expected in zip(jax.tree.leaves(grad), jax.tree.leaves(want_grad)):
      np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  assert straddled >= PAIRS  # windows with an episode boundary inside them were checked
