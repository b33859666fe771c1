"""Tree comparisons for tests: bitwise equality, and equality to within a few ulps."""

from __future__ import annotations

import jax
import numpy as np


def _arrays(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb), (len(la), len(lb))
  for x, y in zip(la, lb):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    yield np.asarray(x), np.asarray(y)


def assert_trees_equal(a, b) -> None:
  """Every leaf bitwise equal (PRNG keys compared by their data)."""
  for x, y in _arrays(a, b):
    np.testing.assert_array_equal(x, y)


def assert_trees_within_ulps(a, b, ulps: int = 4) -> None:
  """Float leaves within ``ulps`` units in the last place (the same maths compiled in two
  programs may round differently); integer and key leaves bitwise equal."""
  for x, y in _arrays(a, b):
    if np.issubdtype(x.dtype, np.floating):
      np.testing.assert_array_max_ulp(x, y, maxulp=ulps)
    else:
      np.testing.assert_array_equal(x, y)


def assert_trees_within_ulps_of_scale(a, b, ulps: int = 16) -> None:
  """Float leaves within ``ulps`` units in the last place of the leaf's largest magnitude
  (``|a - b| <= ulps * spacing(max |b|)``: an element near zero after a cancellation is held to
  the leaf's scale, not to its own); integer and key leaves bitwise equal."""
  for x, y in _arrays(a, b):
    if np.issubdtype(x.dtype, np.floating):
      scale = np.spacing(np.max(np.abs(y)).astype(y.dtype)) if y.size else 0
      diff = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if y.size else 0.0
      assert diff <= ulps * float(scale), (diff, float(scale))
    else:
      np.testing.assert_array_equal(x, y)
