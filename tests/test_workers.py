"""Workers: antithetic pairing, episode resets, step-unlocking, NaN masking, shapes, contract.

PES, GPES and truncated ES run NRES's window engine with other noise rules (and truncated ES a
third, unperturbed branch). The quick tier (``-m "not slow"``) checks each property on NRES, and on
the estimators with engines of their own (FullES, truncated backprop) where it applies; the
``slow`` cases repeat the window engine's checks on PES, GPES and truncated ES."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tasks
from meta_train.engine.estimators.nres import NRESRule
from meta_train.engine.estimators.pes import GPESRule, PESRule
from meta_train.engine.estimators.truncated_es import TruncatedESRule
from meta_train.engine.window import noise as window_noise
from meta_train.estimators import ESTIMATORS, GPES, NRES, PES, TBPTT, FullES, TruncatedES
from tests import systems

KEY = jax.random.key(0)


_all = systems.every_estimator


def test_every_registered_estimator_is_covered():
  assert set(_all(systems.recorder())) == set(ESTIMATORS)


@pytest.mark.parametrize("name", ["nres", pytest.param("pes", marks=pytest.mark.slow),
                                  pytest.param("gpes", marks=pytest.mark.slow)])
def test_pairs_share_start_and_data_and_pairs_differ(name):
  system = systems.recorder(horizon=7)
  est = _all(system, N=16)[name]
  ws = est.init(KEY, system.theta0)
  for i in range(6):  # 18 steps: every pair crosses at least two episode boundaries
    _, ws, _ = est.estimate(jax.random.key(i), system.theta0, ws)
    for leaf in jax.tree.leaves(ws.states):
      np.testing.assert_array_equal(leaf[:, 0], leaf[:, 1])  # same init key, same step keys
  draws = np.asarray(ws.states["step_draw"][:, 0])
  assert len(np.unique(draws)) == len(draws)  # different pairs see different data


@pytest.mark.parametrize("name", ["nres", pytest.param("pes", marks=pytest.mark.slow),
                                  pytest.param("gpes", marks=pytest.mark.slow),
                                  pytest.param("tes", marks=pytest.mark.slow), "tbptt"])
def test_episodes_reset_at_the_horizon(name):
  """The state's own step counter (restarted by init) always agrees with the worker's position t
  (mod T: a pair at t == 0 holds its finished episode's last state until its next step)."""
  system = systems.recorder(horizon=7)
  est = _all(system, N=16, W=3)[name]
  ws = est.init(KEY, system.theta0)
  resets = 0
  episodes0 = np.asarray(ws.episodes).sum()
  for i in range(10):
    _, ws, m = est.estimate(jax.random.key(i), system.theta0, ws)
    resets += int(m["resets"])
    for b in range(ws.states["t"].shape[1]):
      np.testing.assert_array_equal(np.asarray(ws.states["t"][:, b]) % 7, np.asarray(ws.t))
  assert resets == np.asarray(ws.episodes).sum() - episodes0 > 0


def test_nres_noise_changes_only_for_pairs_that_began_an_episode():
  system = systems.recorder(horizon=7)
  est = NRES(system, num_particles=64, sigma=0.1, unroll_length=3)
  ws = est.init(KEY, system.theta0)
  for i in range(8):
    eps_before, episodes_before = np.asarray(ws.eps), np.asarray(ws.episodes)
    _, ws, _ = est.estimate(jax.random.key(i), system.theta0, ws)
    began = np.asarray(ws.episodes) > episodes_before
    changed = np.any(np.asarray(ws.eps) != eps_before, axis=1)
    np.testing.assert_array_equal(changed, began)
    assert began.any() and not began.all()


def test_pes_accumulator_is_the_current_episodes_noise_sum():
  """xi restarts with an episode: a pair that began an episode inside this window holds
  xi == eps (one block); one that did not holds its previous xi plus the new window's eps."""
  system = systems.recorder(horizon=7)
  est = PES(system, num_particles=64, sigma=0.1, unroll_length=3)
  ws = est.init(KEY, system.theta0)
  for i in range(6):
    xi_before, episodes_before = np.asarray(ws.xi), np.asarray(ws.episodes)
    _, ws, _ = est.estimate(jax.random.key(i), system.theta0, ws)
    began = np.asarray(ws.episodes) > episodes_before
    xi, eps = np.asarray(ws.xi), np.asarray(ws.eps)
    np.testing.assert_allclose(xi[began], eps[began], rtol=1e-6)
    np.testing.assert_allclose(xi[~began], xi_before[~began] + eps[~began], rtol=1e-5)


def _chi2_uniform(values, support):
  counts = np.bincount(values, minlength=max(support) + 1)[list(support)]
  assert counts.sum() == len(values), "a position off the expected support"
  expected = len(values) / len(support)
  return np.sum((counts - expected) ** 2 / expected)


@pytest.mark.parametrize("W, support, bound", [
    (5, range(0, 20, 5), 25.0),   # W | T: the window grid; chi^2, 3 dof: P(> 25) ~ 2e-5
    (6, range(20), 50.0),         # W does not divide T: every step; 19 dof: P(> 50) ~ 1e-4
])
def test_step_unlocked_positions_cover_the_horizon_with_real_burn_in(W, support, bound):
  T, N = 20, 4000
  system = systems.recorder(horizon=T)
  ws = NRES(system, num_particles=N, sigma=0.1, unroll_length=W).init(KEY, system.theta0)
  t = np.asarray(ws.t)
  chi2 = _chi2_uniform(t, support)
  assert chi2 < bound, np.bincount(t, minlength=T)
  # The burn-in really ran: each state's own counter is at the worker's position.
  np.testing.assert_array_equal(np.asarray(ws.states["t"][:, 0]), t)
  np.testing.assert_array_equal(np.asarray(ws.burn_in), t)
  locked = NRES(system, num_particles=N, sigma=0.1, unroll_length=W, lockstep=True)
  assert not np.any(np.asarray(locked.init(KEY, system.theta0).t))


# The window forms are NRES's engine (quick); PES, GPES (noise blocks) and truncated ES (a third
# branch) run them with their own noise rules and signs (slow).
@pytest.mark.parametrize("name", ["nres", pytest.param("pes", marks=pytest.mark.slow),
                                  pytest.param("gpes", marks=pytest.mark.slow),
                                  pytest.param("tes", marks=pytest.mark.slow)])
def test_window_forms_agree_exactly(name):
  """A window whose events all fall on its first step runs as a plain scan (events applied
  before it); the general form (per-step selects) gives the same result. Aligned pairs (W | T,
  step-unlocked on the window grid; GPES with K a multiple of W) take the fast form in every
  window; with W not dividing T pairs straddle episode boundaries and take the general one.
  Integers agree exactly, floats to rounding (hoisting theta-only work out of the loop may
  reorder a sum)."""
  from meta_train.engine import window
  system = systems.linear_pytree(12)
  theta = system.theta0
  cls = {"nres": NRES, "pes": PES, "gpes": functools.partial(GPES, K=4), "tes": TruncatedES}[name]
  signs = (1.0, -1.0, 0.0) if name == "tes" else (1.0, -1.0)
  for W, aligned in ((4, True), (5, False)):
    est = cls(system, num_particles=16, sigma=0.1, unroll_length=W)
    ws = est.init(KEY, theta)
    run = functools.partial(window.run_window, system, theta, num_steps=W, signs=signs,
                            sigma=est.sigma, noise_rule=est.noise_rule)
    run_default = jax.jit(lambda ws, key: run(ws, key))  # the fast form when it applies
    run_general = jax.jit(lambda ws, key: run(ws, key, general_form=True))
    for i in range(4):
      key = jax.random.key(10 + i)
      plan = window.plan_window(ws.t, ws.length, num_steps=W, noise_rule=est.noise_rule)
      fast = bool(plan.events_at_start())
      if aligned:
        assert fast, (i, np.asarray(ws.t))
      elif i == 0:
        assert not fast, np.asarray(ws.t)
      branches = ws
      if name == "tes":
        branches = ws.replace(states=jax.tree.map(lambda x: jnp.repeat(x, 3, axis=1), ws.states))
      a, b = run_default(branches, key), run_general(branches, key)
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if jnp.issubdtype(x.dtype, jnp.floating):
          np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-6)
        else:
          np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
      # On to the next window: the default window's workers (what an estimate's window leaves;
      # one compiled program fewer), except for truncated ES, which stores only the centre.
      ws = a[0] if name != "tes" else est.estimate(key, theta, ws)[1]


def test_burn_in_matches_running_the_system():
  """A burned-in Lorenz pair sits where unrolling theta +/- its noise from the start puts it."""
  system = tasks.get("lorenz", horizon=50)
  est = NRES(system, num_particles=6, sigma=0.04, unroll_length=5)
  ws = est.init(KEY, system.theta0)
  for i in range(3):
    tau, eps = int(ws.t[i]), np.asarray(ws.eps[i])
    for b, sign in enumerate((1.0, -1.0)):
      state, _ = system.unroll(system.theta0 + sign * eps, system.init(KEY), jax.random.split(KEY, tau))
      np.testing.assert_allclose(np.asarray(ws.states["xyz"][i, b]), np.asarray(state["xyz"]),
                                 rtol=1e-4, atol=1e-5)


# The window estimators share the masking (quick: NRES and FullES; PES and truncated ES slow).
@pytest.mark.parametrize("name", ["nres", pytest.param("pes", marks=pytest.mark.slow), "full_es",
                                  pytest.param("tes", marks=pytest.mark.slow)])
def test_nonfinite_losses_are_masked_and_counted(name):
  """Both particles of a pair see NaN on the same steps (shared keys): each such (pair, step) is
  counted once in metrics["nonfinite"], the estimate stays finite, and the finite steps alone
  still estimate the gradient."""
  theta = jnp.zeros(2)
  if name != "full_es":  # no resets within these windows: the states' NaN counters only grow
    system = systems.nan_prone(horizon=100, rate=0.25)
    est = {"nres": NRES, "pes": PES, "tes": TruncatedES}[name](
        system, num_particles=32, sigma=0.1, unroll_length=5, lockstep=True)
    ws = est.init(KEY, theta)
    for i in range(4):
      before = int(np.asarray(ws.states["nans"][:, 0]).sum())
      g, ws, m = est.estimate(jax.random.key(i), theta, ws)
      assert np.all(np.isfinite(systems.flat(g))) and np.isfinite(float(m["meta_loss"]))
      assert int(m["nonfinite"]) == int(np.asarray(ws.states["nans"][:, 0]).sum()) - before > 0
  system = systems.nan_prone(horizon=10, rate=0.25)
  est = _all(system, N=32, W=5)[name]
  _, _, m = est.estimate(jax.random.key(7), theta, est.init(jax.random.key(8), theta))
  assert int(m["nonfinite"]) > 0
  # grad of (theta - 1)^2 at theta = 0 is -2 per coordinate: within 5 standard errors over 100
  # independent replicates (each about 0.1: a bias of 0.5 would fail).
  grads = systems.replicate_estimates(est, theta, jax.random.key(9), 100)
  mean, se = grads.mean(axis=0), grads.std(axis=0, ddof=1) / np.sqrt(100)
  assert np.all(np.abs(mean + 2.0) < 5 * se) and np.all(se < 0.15), (mean, se)


def test_tbptt_masks_nonfinite_trajectories():
  system = systems.nan_prone(horizon=10, rate=0.1)
  est = TBPTT(system, num_particles=16, unroll_length=3)
  g, _, m = est.estimate(KEY, system.theta0, est.init(KEY, system.theta0))
  assert np.all(np.isfinite(np.asarray(g))) and int(m["nonfinite"]) > 0
  np.testing.assert_allclose(np.asarray(g), [-2.0, -2.0], rtol=1e-5)


# NRES's window engine, FullES and truncated backprop in the quick tier; PES, GPES and truncated
# ES (the window engine again) are slow.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow)
                                  if n in ("pes", "gpes", "tes") else n for n in ESTIMATORS])
def test_pytree_theta_shapes_and_contract(name):
  """Grad has theta's structure, shapes and dtypes; estimate runs inside lax.scan (worker-state
  shapes and dtypes never change) and its results agree with calling it step by step."""
  system = systems.linear_pytree(12)
  est = _all(system, N=6, W=4)[name]
  theta = system.theta0
  ws0 = est.init(KEY, theta)
  g, ws1, metrics = est.estimate(KEY, theta, ws0)
  assert jax.tree.structure(g) == jax.tree.structure(theta)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(theta)):
    assert a.shape == b.shape and a.dtype == b.dtype
  if ws0 is not None:
    assert jax.tree.structure(ws1) == jax.tree.structure(ws0)
    for a, b in zip(jax.tree.leaves(ws1), jax.tree.leaves(ws0)):
      assert a.shape == b.shape and a.dtype == b.dtype
  for value in metrics.values():
    assert np.shape(value) == () and np.isfinite(value)
  keys = jax.random.split(jax.random.key(5), 3)

  def body(ws, k):
    g, ws, _ = est.estimate(k, theta, ws)
    return ws, g
  _, scanned = jax.jit(lambda ws: jax.lax.scan(body, ws, keys))(ws0)
  ws = ws0
  for i, k in enumerate(keys):
    g, ws, _ = est.estimate(k, theta, ws)
    np.testing.assert_allclose(systems.flat(g), systems.flat(jax.tree.map(lambda x: x[i], scanned)),
                               rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Bad input: one clear error naming the field, raised at construction (before any compute).
# ---------------------------------------------------------------------------------------------

def test_odd_particles_rejected():
  with pytest.raises(ValueError, match=r"^num_particles: must be even \(N counts particles: "
                     r"N/2 antithetic pairs\); got 7$"):
    NRES(systems.recorder(), num_particles=7, sigma=0.1, unroll_length=2)


@pytest.mark.parametrize("sigma", [0.0, -0.1, float("nan"), float("inf")])
def test_nonpositive_sigma_rejected(sigma):
  with pytest.raises(ValueError, match=r"^sigma: must be a positive finite number; got"):
    PES(systems.recorder(), num_particles=4, sigma=sigma, unroll_length=2)


def test_unroll_length_longer_than_horizon_rejected():
  with pytest.raises(ValueError, match=r"^unroll_length: W=8 is longer than the horizon T=7 of "
                     r"'recorder'; allowed: 1\.\.7$"):
    NRES(systems.recorder(horizon=7), num_particles=4, sigma=0.1, unroll_length=8)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_particles": 0}, "num_particles: must be a positive int; got 0"),
    ({"unroll_length": 0}, "unroll_length: must be a positive int (W); got 0"),
    ({"K": 0}, "K: must be a positive int (steps per noise block); got 0"),
])
def test_other_bad_settings_rejected(kwargs, message):
  args = {"num_particles": 4, "sigma": 0.1, "unroll_length": 2, "K": 2, **kwargs}
  with pytest.raises(ValueError) as err:
    GPES(systems.recorder(), **args)
  assert str(err.value) == message


def test_full_es_needs_a_horizon():
  with pytest.raises(ValueError, match="full_es needs a finite horizon; 'influence_balancing' "
                     "never resets"):
    FullES(tasks.get("influence_balancing"), num_particles=4, sigma=0.1)


def test_unknown_estimator_lists_valid_names():
  from meta_train.estimators import make
  with pytest.raises(ValueError) as err:
    make("nress", systems.recorder(), num_particles=4)
  assert str(err.value) == ("estimator: unknown estimator 'nress'; valid: full_es, gpes, nres, pes, "
                            "tbptt, tes")


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_an_empty_theta_is_refused(name):
  estimator = _all(systems.recorder())[name]
  with pytest.raises(ValueError) as err:
    estimator.init(KEY, {})
  assert str(err.value) == "theta: has no arrays (got {}): there is nothing to estimate"


def test_states_with_empty_arrays_step():
  """A leaf of size zero (an optimizer state with nothing to factor) flows through the window's
  flat [P * S, ...] batches."""
  system = tasks.UnrolledSystem(
      init=lambda key: {"x": jnp.zeros(2), "nothing": jnp.zeros((3, 0))},
      step=lambda theta, s, key: ({"x": s["x"] + theta, "nothing": s["nothing"]},
                                  jnp.sum((s["x"] - 1.0) ** 2)),
      horizon=6, theta0=jnp.zeros(2))
  for estimator in (NRES(system, num_particles=4, sigma=0.1, unroll_length=2),
                    PES(system, num_particles=4, sigma=0.1, unroll_length=4)):
    ws = estimator.init(KEY, system.theta0)
    grad, ws, _ = estimator.estimate(KEY, system.theta0, ws)
    assert grad.shape == (2,) and bool(jnp.all(jnp.isfinite(grad)))
    assert ws.states["nothing"].shape == (2, 2, 3, 0)


class _EveryWindowAndBlocks(window_noise.NoiseRule):
  """A rule of no estimator, written as a new rule would be: PES's draw at each window's start and
  GPES_K's blocks together (the engine combines any rule's draws with the episode starts)."""

  accumulates = False

  def __init__(self, K):
    self.blocks = GPESRule(K)

  def max_draws(self, num_steps):
    return PESRule().max_draws(num_steps) + self.blocks.max_draws(num_steps)

  def next_draw(self, prev, **where):
    return jnp.minimum(PESRule().next_draw(prev, **where), self.blocks.next_draw(prev, **where))


# Each rule and where it draws besides episode starts, as a predicate of the window step ``j`` and
# the position ``pos`` in the episode.
_RULES = {
    "nres": (NRESRule(), lambda j, pos: False),
    "pes": (PESRule(), lambda j, pos: j == 0),
    "tes": (TruncatedESRule(), lambda j, pos: j == 0),
    "gpes_3": (GPESRule(3), lambda j, pos: pos % 3 == 0),
    "gpes_1": (GPESRule(1), lambda j, pos: True),
    "window_and_blocks_4": (_EveryWindowAndBlocks(4), lambda j, pos: j == 0 or pos % 4 == 0),
}


@pytest.mark.parametrize("name", sorted(_RULES))
def test_plan_window_matches_stepping_through_the_window(name):
  """The closed-form plan equals walking the window step by step: a pair at position ``t`` of an
  episode of ``length`` steps starts a new one (position 0) when ``t`` reaches ``length`` or is
  0, and draws noise at an episode start and wherever its rule draws; a burn-in pair stops after
  ``end`` steps."""
  from meta_train.engine import window
  rule, draws_at = _RULES[name]
  rng = np.random.default_rng(0)
  W, P = 5, 400
  length = rng.integers(W, 12, size=P).astype(np.int32)  # no episode shorter than the window
  t = (rng.integers(0, 12, size=P) % length).astype(np.int32)
  end = np.where(rng.random(P) < 0.3, rng.integers(0, W + 1, size=P), W).astype(np.int32)
  plan = window.plan_window(jnp.asarray(t), jnp.asarray(length), num_steps=W, noise_rule=rule,
                            end=jnp.asarray(end))
  M = window.max_draws(W, rule)
  assert plan.draws.shape == (P, M)
  for i in range(P):
    pos, start, draws = int(t[i]), W, []
    for j in range(int(end[i])):
      if pos in (0, int(length[i])):
        pos = 0
        start = j
      if pos == 0 or draws_at(j, pos):
        draws.append(j)
      pos += 1
    assert int(plan.start[i]) == start, i
    assert list(np.asarray(plan.draws[i])) == draws + [W] * (M - len(draws)), i
  assert bool(plan.events_at_start()) == bool(np.all(
      ((np.asarray(plan.start) == 0) | (np.asarray(plan.start) == W))
      & np.all((np.asarray(plan.draws) == 0) | (np.asarray(plan.draws) == W), axis=1)))
