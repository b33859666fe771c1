"""Statistical properties, with confidence bounds: unbiasedness, truncation bias, variance.

The quick tier (``-m "not slow"``) checks every ES estimator's unbiasedness on the linear system
with a pytree theta; the ``slow`` cases repeat it on influence balancing."""

import jax
import numpy as np
import pytest

import tasks
from meta_train.estimators import GPES, NRES, PES, TBPTT, FullES, TruncatedES
from tests import systems

R = 100        # independent replicates (each: a fresh burn-in + one estimate at fixed theta)
Z_MAX = 5.0    # |mean - target| <= 5 standard errors; P(|t_99| > 5) ~ 2.5e-6 per coordinate
BIAS = 0.10    # the relative bias the unbiasedness test must detect (its power)
MARGIN = 3.0   # ... by this many standard errors beyond Z_MAX (see test_unbiased_at_fixed_theta)

UNBIASED = {
    "nres": lambda s: NRES(s, num_particles=2000, sigma=0.1, unroll_length=5),
    "pes": lambda s: PES(s, num_particles=2000, sigma=0.1, unroll_length=5),
    "gpes": lambda s: GPES(s, num_particles=2000, sigma=0.1, unroll_length=5, K=10),
    "full_es": lambda s: FullES(s, num_particles=2000, sigma=0.1),
}
SYSTEMS = {
    "influence_balancing": lambda: tasks.get("influence_balancing", horizon=40),
    "linear_pytree": lambda: systems.linear_pytree(24),
}


def _estimates(est, system, theta):
  """``(G [R, d], target [d])``: R independent estimates at theta, flattened, and jax.grad of
  the full-unroll objective.

  The systems are linear in theta with quadratic losses, so the Gaussian-smoothed objective of
  every estimator (FullES's and the GPES_K ones alike) has exactly the unsmoothed gradient.
  """
  target = systems.flat(jax.grad(lambda th: system.mean_loss(th, jax.random.key(0)))(theta))
  grads = systems.replicate_estimates(est, theta, jax.random.key(1), R)
  G = np.stack([systems.flat(jax.tree.map(lambda x: x[i], grads)) for i in range(R)])
  return G, target


def _z(G, target):
  """The test statistic: z of each coordinate of the mean estimate against the target (its
  standard error from the replicates' spread), and each coordinate's standard error relative to
  the target."""
  se = G.std(axis=0, ddof=1) / np.sqrt(G.shape[0])
  return (G.mean(axis=0) - target) / se, se / np.abs(target)


def _z_scores(est, system, theta):
  return _z(*_estimates(est, system, theta))


@pytest.mark.parametrize("system_name", [n if n == "linear_pytree" else
                                         pytest.param(n, marks=pytest.mark.slow) for n in SYSTEMS])
@pytest.mark.parametrize("name", list(UNBIASED))
def test_unbiased_at_fixed_theta(name, system_name):
  """Every coordinate's mean estimate is within Z_MAX standard errors of the gradient, and the
  same check has power: the same estimates with a 10% bias injected (each estimate times 1.1)
  fail it."""
  system = SYSTEMS[system_name]()
  G, target = _estimates(UNBIASED[name](system), system, system.theta0)
  z, rel_se = _z(G, target)
  assert np.all(np.abs(z) < Z_MAX), f"z-scores {z}"
  z_biased, _ = _z((1 + BIAS) * G, target)
  assert np.max(np.abs(z_biased)) > Z_MAX, f"a {BIAS:.0%} bias goes undetected: z {z_biased}"
  # Not by luck of these draws: the bias moves coordinate i's z by BIAS / (1 + BIAS) / rel_se_i
  # (the scaled estimates' standard error scales too). On the best-resolved coordinate that is
  # Z_MAX + MARGIN standard errors or more, so with fresh draws (z ~ N(0, 1) before the shift) a
  # 10% bias would still fail the check with probability > 99.8%.
  shift = BIAS / (1 + BIAS) / rel_se
  assert np.max(shift) > Z_MAX + MARGIN, f"the smallest detectable shift {shift} (rel. SE {rel_se})"


@pytest.mark.parametrize("make", [
    lambda s: TruncatedES(s, num_particles=1000, sigma=0.1, unroll_length=1),
    lambda s: TBPTT(s, num_particles=200, unroll_length=1),
], ids=["tes", "tbptt"])
def test_truncated_estimators_are_biased_on_influence_balancing(make):
  system = SYSTEMS["influence_balancing"]()
  z, _ = _z_scores(make(system), system, system.theta0)
  assert np.all(np.abs(z) > 10 * Z_MAX), f"z-scores {z}"


@pytest.mark.parametrize("make", [
    lambda s: TruncatedES(s, num_particles=400, sigma=0.1, unroll_length=1),
    lambda s: TBPTT(s, num_particles=50, unroll_length=1),
], ids=["tes", "tbptt"])
def test_w1_truncations_push_influence_balancing_the_wrong_way(make):
  """Never-ending influence balancing, theta = 0.5 > theta* = -1/6: descent should lower theta
  (positive gradient); once the state has settled, one-step truncations report a negative one."""
  system = tasks.get("influence_balancing")
  est, theta = make(system), system.theta0
  ws = est.init(jax.random.key(0), theta)
  run = jax.jit(lambda ws, k: est.estimate(k, theta, ws))
  for i in range(200):  # let the state settle at theta
    g, ws, _ = run(ws, jax.random.key(i))
  assert float(g[0]) < -1.0
  nres = NRES(system, num_particles=400, sigma=0.1, unroll_length=1)
  ws = nres.init(jax.random.key(0), theta)
  grads = []
  for i in range(200):
    g, ws, _ = nres.estimate(jax.random.key(i), theta, ws)
    grads.append(float(g[0]))
  assert np.mean(grads[100:]) > 5.0  # the long-run gradient, 6 (6 theta + 1) = 24


def _window_variance(est_cls, horizon, windows=5):
  system = systems.ar1(horizon)
  est = est_cls(system, num_particles=4000, sigma=0.1, unroll_length=2)
  ws = est.init(jax.random.key(0), system.theta0)
  values = []
  for i in range(windows):
    _, ws, m = est.estimate(jax.random.key(i + 1), system.theta0, ws)
    values.append(float(m["grad_variance"]) * est.num_pairs)  # tr Cov of one pair's estimate
  return np.mean(values)


def test_total_variance_flat_in_t_over_w_for_nres_growing_for_pes():
  """ar1 system, W=2, step-unlocked workers, T/W in {4, 16, 64}: one pair's window estimate has
  a total variance independent of T/W for NRES and growing with it for PES (its accumulated
  noise grows with the number of windows per episode). 2000 pairs x 5 windows per point: the
  variance estimates carry a few percent of error, far inside these margins."""
  nres = [_window_variance(NRES, T) for T in (8, 32, 128)]
  pes = [_window_variance(PES, T) for T in (8, 32, 128)]
  assert 0.8 < nres[2] / nres[0] < 1.25 and 0.8 < nres[1] / nres[0] < 1.25, nres
  assert pes[0] < pes[1] < pes[2], pes
  assert pes[2] / pes[0] > 3.0, pes
  assert pes[2] > 4 * nres[2], (pes, nres)
