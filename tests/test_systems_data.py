"""Systems with episodes of varying length, and systems that read data.

The quick tier (``-m "not slow"``) resets varying-length episodes under NRES and truncated
backprop (the window engine and backprop's); the ``slow`` cases add PES and truncated ES (the
window engine with other noise rules)."""

import jax
import numpy as np
import optax
import pytest

from meta_train.estimators import NRES, PES, TBPTT, FullES, TruncatedES
from meta_train.engine.trainer import Trainer
from tests import systems

KEY = jax.random.key(0)


@pytest.mark.parametrize("cls", [NRES, pytest.param(PES, marks=pytest.mark.slow),
                                 pytest.param(TruncatedES, marks=pytest.mark.slow), TBPTT])
def test_episodes_of_varying_length_reset_at_their_own_end(cls):
  system = systems.varying_length(5, 11)
  kwargs = {} if cls is TBPTT else {"sigma": 0.1}
  est = cls(system, num_particles=64, unroll_length=5, **kwargs)
  ws = est.init(KEY, system.theta0)
  lengths_seen = set()
  resets = 0
  for i in range(12):  # 60 steps: every pair runs through several episodes
    _, ws, m = est.estimate(jax.random.key(i), system.theta0, ws)
    resets += int(m["resets"])
    for b in range(ws.states["t"].shape[1]):
      counter, length = np.asarray(ws.states["t"][:, b]), np.asarray(ws.states["length"][:, b])
      t = np.asarray(ws.t)
      # The pair's position is its state's own step count (0 once the episode is over).
      np.testing.assert_array_equal(np.where(counter == length, 0, counter), t)
      np.testing.assert_array_equal(length, np.asarray(ws.length))
    lengths_seen |= set(np.asarray(ws.length).tolist())
  assert lengths_seen == set(range(5, 12)) and resets > 64


def test_window_longer_than_the_shortest_episode_rejected():
  with pytest.raises(ValueError, match=r"^unroll_length: W=6 is longer than the shortest episode "
                     r"\(5 steps\) of 'varying_length'; allowed: 1\.\.5$"):
    NRES(systems.varying_length(5, 11), num_particles=4, sigma=0.1, unroll_length=6)


def test_full_es_counts_only_the_steps_of_each_episode():
  """L_t = theta (1 + t): over an episode of length n the mean loss is theta (n + 1) / 2, so
  FullES's step-weighted estimate is E[n (n + 1) / 2] / E[n] for lengths uniform in [5, 11]."""
  system = systems.varying_length(5, 11)
  est = FullES(system, num_particles=4000, sigma=0.1)
  g, _, _ = est.estimate(KEY, system.theta0, None)
  n = np.arange(5, 12)
  expected = np.sum(n * (n + 1) / 2) / np.sum(n)
  assert abs(float(g[0]) - expected) < 0.15  # the estimate's standard error here is ~0.03


def test_data_reaches_compiled_code_as_an_argument():
  """A 4 MB table: the compiled estimate is small (the table is not embedded), the estimate
  matches the same system with the table closed over eagerly, and the trainer runs on it."""
  system = systems.lookup()
  est = NRES(system, num_particles=8, sigma=0.1, unroll_length=5)
  theta = system.theta0
  ws = est.init(KEY, theta)
  text = jax.jit(est.estimate_fn).lower(KEY, theta, ws, system.data).as_text()
  assert len(text) < 500_000  # the table alone would print as > 10 MB of text
  g, _, _ = est.estimate(KEY, theta, ws)
  closed = NRES(system.bound(), num_particles=8, sigma=0.1, unroll_length=5)
  g_closed, _, _ = closed.estimate(KEY, theta, closed.init(KEY, theta))
  np.testing.assert_allclose(np.asarray(g), np.asarray(g_closed), rtol=1e-6)
  trainer = Trainer(est, optax.sgd(0.1))
  state, metrics = trainer.run(trainer.init(KEY, theta), 5)
  assert np.all(np.isfinite(np.asarray(metrics["meta_loss"])))


def test_data_system_without_its_data_is_an_error():
  system = systems.lookup()
  with pytest.raises(ValueError, match="^data: system 'lookup' needs its data to be bound$"):
    system.bind(None)
