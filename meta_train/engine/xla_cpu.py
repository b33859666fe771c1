"""What the window engine writes differently because XLA:CPU compiles the plain form slowly.

Each helper computes exactly what its plain form would (bit for bit, except where a docstring
says otherwise); it exists only for speed on CPU, where a small system's window costs tens of
microseconds and every extra kernel shows. What each change bought, and how it was measured, is
in ``benchmarks/README.md``. GPUs and TPUs run the same code.

Layout rules the engine follows besides these helpers (one line each on why):

* The ``P`` pairs x ``S`` branches run as one flat batch of ``P * S`` particles inside the scan:
  nested ``[P, S, ...]`` batches make XLA emit slower loops for small per-particle states.
* The step counter rides in the scan's carry: read from a scanned array, it is sliced inside
  every fused step kernel.
* The scan stores each step's losses; sums over the steps are taken after it: summed in the carry,
  XLA fuses the step into each sum and recomputes it once per sum.
* Operands of per-step selects (fresh episode states, start steps) are materialized before the
  scan: left as broadcasts, they are re-laid out inside every step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def materialize(tree: PyTree) -> PyTree:
  """``tree``, computed once by kernels of its own (an optimization barrier).

  Keys and noise are chains of threefry hashes; fused into their consumers, XLA recomputes the
  chain for every element consumed.
  """
  return jax.lax.optimization_barrier(tree)


def sum_leading(x: jax.Array) -> jax.Array:
  """``x`` summed over its leading axis, ``[W, ...] -> [...]``, as a product with a ones vector.

  A reduction over a leading axis runs several times slower than a matrix-vector product.
  ``precision=HIGHEST`` keeps float32 accumulation.
  """
  flat = x.reshape(x.shape[0], -1)
  total = jnp.matmul(jnp.ones((x.shape[0],), flat.dtype), flat,
                     precision=jax.lax.Precision.HIGHEST)
  return total.reshape(x.shape[1:])


def sum_leading_tree(tree: PyTree) -> PyTree:
  """Every leaf summed over its leading axis (``[P, ...] -> [...]``), each in its own dtype
  (integers are summed as float32, exact below 2**24).

  One product for all leaves: the leaves as rows ``[n, P]``, stacked on the major axis into one
  table, times a ones vector. A reduction per leaf costs several kernels, and a table stacked on
  the minor axis is built element by element.
  """
  leaves, treedef = jax.tree.flatten(tree)
  num = leaves[0].shape[0]
  rows = [jnp.reshape(x, (num, -1)).astype(jnp.float32).T for x in leaves]
  table = jnp.concatenate(rows, axis=0)  # [R, P]
  totals = jnp.matmul(table, jnp.ones((num,), jnp.float32), precision=jax.lax.Precision.HIGHEST)
  out, offset = [], 0
  for x, r in zip(leaves, rows):
    out.append(totals[offset:offset + r.shape[0]].reshape(x.shape[1:]).astype(x.dtype))
    offset += r.shape[0]
  return jax.tree.unflatten(treedef, out)


def select_rows(index: jax.Array, rows: PyTree) -> PyTree:
  """Row ``index[i]`` of ``rows`` for each ``i``: leaves ``[P, E, ...] -> [P, ...]``.

  A chain of ``E - 1`` selects (``E`` is small): selects fuse into what consumes them, a gather
  does not.
  """
  def take(x):
    idx = jnp.reshape(index, index.shape + (1,) * (x.ndim - 2))
    out = x[:, 0]
    for e in range(1, x.shape[1]):
      out = jnp.where(idx == e, x[:, e], out)
    return out
  return jax.tree.map(take, rows)


def all_true(ok: jax.Array) -> jax.Array:
  """``jnp.all(ok)`` as one kernel (a count of the false entries); ``jnp.all`` takes three."""
  return jnp.sum(jnp.where(ok, 0, 1)) == 0
