"""Parameter initializers that compile to plain XLA operations (no LAPACK custom calls).

:func:`orthogonal` draws the same matrices as ``jax.nn.initializers.orthogonal`` (Flax's default
for recurrent kernels) from the same key, up to float rounding, but computes the QR factorization
with Householder reflections written in ``jax.numpy`` instead of calling LAPACK's ``geqrf`` and
``orgqr``.

Why: jaxlib 0.10's CPU LAPACK kernels split a batched call into tasks on XLA's intra-op thread
pool and block a pool thread until they finish. When as many batched LAPACK calls run at once as
the pool has threads (the four gates of a vmapped LSTM initialization on a 2-core machine), every
pool thread waits for tasks that no thread is left to run, and the program never returns.
Initializing the inner networks of every particle of an estimator is exactly such a vmapped,
batched call, so the inner tasks use this initializer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def orthonormal_columns(a: jax.Array) -> jax.Array:
  """The ``Q`` of the thin QR factorization ``a = Q R`` with ``diag(R) >= 0``.

  Householder reflections in a ``fori_loop`` over the columns: ``O(m n^2)`` flops, as LAPACK's
  ``geqrf`` + ``orgqr``, in ordinary XLA operations (batch it with ``jax.vmap``).

  Args:
    a: ``[m, n]`` with ``m >= n``.

  Returns:
    ``[m, n]`` with orthonormal columns, ``Q * sign(diag(R))`` of the Householder factorization
    (the unique ``Q`` with a positive ``diag(R)`` when ``a`` has full rank), as
    ``jax.random.orthogonal`` returns it.
  """
  m, n = a.shape
  if m < n:
    raise ValueError(f"orthonormal_columns needs a tall matrix (m >= n); got shape {a.shape}")
  rows = jnp.arange(m)

  def reflect(k, carry):
    """Zeroes column ``k`` of ``r`` below the diagonal with ``H_k = I - beta_k v_k v_k^T``."""
    r, vs, betas, diag = carry
    x = jnp.where(rows >= k, jax.lax.dynamic_index_in_dim(r, k, axis=1, keepdims=False), 0)
    norm = jnp.sqrt(jnp.sum(x * x))
    sign = jnp.where(x[k] >= 0, 1.0, -1.0).astype(a.dtype)
    v = x + jnp.where(rows == k, sign * norm, 0).astype(a.dtype)  # x - alpha e_k, alpha = -sign |x|
    vv = jnp.sum(v * v)
    beta = jnp.where(vv > 0, 2.0 / jnp.where(vv > 0, vv, 1.0), 0.0).astype(a.dtype)
    r = r - beta * jnp.outer(v, v @ r)
    return r, vs.at[k].set(v), betas.at[k].set(beta), diag.at[k].set(-sign * norm)

  init = (a, jnp.zeros((n, m), a.dtype), jnp.zeros((n,), a.dtype), jnp.zeros((n,), a.dtype))
  _, vs, betas, diag = jax.lax.fori_loop(0, n, reflect, init)

  def apply(i, q):
    """``Q = H_0 H_1 ... H_{n-1} I[:, :n]``, applied from the last reflection back."""
    k = n - 1 - i
    return q - betas[k] * jnp.outer(vs[k], vs[k] @ q)

  q = jax.lax.fori_loop(0, n, apply, jnp.eye(m, n, dtype=a.dtype))
  return q * jnp.sign(diag)[None, :]


def orthogonal(scale: float = 1.0, column_axis: int = -1, dtype=None):
  """An initializer of (semi-)orthogonal matrices: ``jax.nn.initializers.orthogonal`` without
  LAPACK (see the module docstring). Same arguments, same key use, same values up to rounding.

  >>> import jax
  >>> w = orthogonal()(jax.random.key(0), (4, 4))
  >>> bool(jax.numpy.allclose(w.T @ w, jax.numpy.eye(4), atol=1e-6))
  True
  """

  def init(key: jax.Array, shape: Sequence[int], dtype=dtype) -> jax.Array:
    dtype = jnp.float32 if dtype is None else dtype
    shape = tuple(shape)
    if len(shape) < 2:
      raise ValueError("orthogonal initializer requires at least a 2D shape")
    if any(dim == 0 for dim in shape):
      return jnp.zeros(shape, dtype)
    n_rows, n_cols = math.prod(shape) // shape[column_axis], shape[column_axis]
    z = jax.random.normal(key, (max(n_rows, n_cols), min(n_rows, n_cols)), dtype)
    q = orthonormal_columns(z)
    if n_rows < n_cols:
      q = q.T
    q = jnp.reshape(q, tuple(np.delete(shape, column_axis)) + (shape[column_axis],))
    return jnp.asarray(scale, dtype) * jnp.moveaxis(q, -1, column_axis)

  return init
