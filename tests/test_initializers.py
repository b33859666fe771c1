"""The LAPACK-free orthogonal initializer, and the jaxlib deadlock it works around."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tasks import initializers

# The deadlock reduced to plain JAX: two independent QR factorizations of batches of 64 x 64
# matrices drawn in the same program. On jaxlib 0.10.2's CPU backend, with an intra-op pool of two
# threads (a 2-core machine), it never returns (hung 5 runs of 5). `QR` is `jnp.linalg.qr`
# there; this test runs it with the workaround's Householder QR, which must finish.
REDUCED_PROGRAM = """
import jax, jax.numpy as jnp
from tasks.initializers import orthonormal_columns
QR = jax.vmap(orthonormal_columns)

@jax.jit
def f(key):
  return [QR(jax.random.normal(k, (2, 64, 64))) for k in jax.random.split(key, 2)]

for i in range(50):
  jax.block_until_ready(f(jax.random.key(i)))
print("finished")
"""


@pytest.mark.parametrize("shape", [(64, 64), (3, 7), (7, 3), (2, 3, 5), (100, 16)])
@pytest.mark.parametrize("column_axis", [-1, 0])
def test_orthogonal_draws_what_jax_draws(shape, column_axis):
  for seed in range(3):
    key = jax.random.key(seed)
    ours = initializers.orthogonal(scale=1.5, column_axis=column_axis)(key, shape)
    theirs = jax.nn.initializers.orthogonal(scale=1.5, column_axis=column_axis)(key, shape)
    assert ours.shape == shape and ours.dtype == jnp.float32
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-5)


def test_orthonormal_columns_is_the_positive_qr_factor():
  a = jax.random.normal(jax.random.key(0), (40, 24))
  q = initializers.orthonormal_columns(a)
  np.testing.assert_allclose(q.T @ q, np.eye(24), atol=2e-6)
  r = q.T @ a  # upper triangular with a positive diagonal
  np.testing.assert_allclose(np.tril(r, -1), 0, atol=2e-5)
  assert np.all(np.diag(r) > 0)
  np.testing.assert_allclose(q @ r, a, atol=2e-5)


def test_errors():
  with pytest.raises(ValueError, match=r"needs a tall matrix \(m >= n\); got shape \(2, 3\)"):
    initializers.orthonormal_columns(jnp.ones((2, 3)))
  with pytest.raises(ValueError, match="requires at least a 2D shape"):
    initializers.orthogonal()(jax.random.key(0), (4,))


def test_vmapped_initialization_calls_no_lapack():
  keys = jax.random.split(jax.random.key(0), 4)
  ours = jax.jit(jax.vmap(lambda k: initializers.orthogonal()(k, (64, 64)))).lower(keys).as_text()
  theirs = jax.jit(jax.vmap(lambda k: jax.nn.initializers.orthogonal()(k, (64, 64)))).lower(keys)
  assert "lapack" in theirs.as_text()  # what deadlocks: lapack_sgeqrf_ffi, lapack_sorgqr_ffi
  assert "lapack" not in ours


def test_reduced_deadlock_program_finishes_with_the_workaround():
  result = subprocess.run([sys.executable, "-c", REDUCED_PROGRAM], capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0 and result.stdout.strip() == "finished", result.stderr[-2000:]
