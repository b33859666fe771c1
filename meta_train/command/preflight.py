"""Known hazards of the platform, checked before a run spends any compute.

jaxlib 0.10's CPU LAPACK kernels (QR, Cholesky, eigh, SVD, LU, triangular solves...) split a
batched call into tasks on XLA's intra-op thread pool and block a pool thread until they finish.
When as many of them run at once as the pool has threads, every pool thread waits for tasks no
thread is left to run: the program never returns. Estimators vmap a system's ``init`` and
``step`` over the pairs, so a LAPACK call there (e.g. Flax's default orthogonal initializer of
recurrent kernels, a QR) becomes exactly such a batched call. :func:`lapack_warning` finds them
in the lowered programs, without compiling anything.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp

import tasks
from tasks.base import UnrolledSystem

_LAPACK_CALL = re.compile(r"custom_call @(lapack_\w+)")


def lapack_calls(system: UnrolledSystem, num_pairs: int = 2) -> dict[str, list[str]]:
  """The LAPACK custom calls (e.g. ``lapack_sgeqrf_ffi``) of ``system.init`` and ``system.step``
  vmapped over ``num_pairs``, lowered for the default backend (nothing is compiled):
  ``{"init": [...], "step": [...]}``."""
  bound = system.bound()
  keys = jax.random.split(jax.random.key(0), num_pairs)
  init = jax.jit(jax.vmap(bound.init)).lower(keys)
  states = jax.eval_shape(jax.vmap(bound.init), keys)
  thetas = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_pairs,) + jnp.shape(x)), system.theta0)
  step = jax.jit(jax.vmap(bound.step)).lower(thetas, states, keys)
  return {name: sorted(set(_LAPACK_CALL.findall(lowered.as_text())))
          for name, lowered in (("init", init), ("step", step))}


def affected() -> bool:
  """Whether this process runs XLA:CPU with a jaxlib whose LAPACK kernels can deadlock (0.10)."""
  return jax.default_backend() == "cpu" and jax.lib.__version__.startswith("0.10.")


def lapack_warning(system, num_pairs: int) -> str | None:
  """A one-line warning if ``system`` (or a member of a task distribution, whose ``systems``
  are checked one by one) calls LAPACK under vmap where that can deadlock, else None."""
  if num_pairs < 2 or system.theta0 is None or not affected():
    return None
  if isinstance(system, tasks.DistributionSystem):
    warnings = (lapack_warning(s, num_pairs) for s in system.systems.values())
    return next((w for w in warnings if w is not None), None)
  calls = lapack_calls(system, num_pairs)
  found = [f"{name} ({', '.join(c)})" for name, c in calls.items() if c]
  if not found:
    return None
  return (f"meta-train: WARNING: {system.name!r} calls LAPACK in its vmapped "
          f"{' and '.join(found)}: jaxlib {jax.lib.__version__}'s batched CPU LAPACK kernels can "
          "deadlock (the run then never returns; SIGTERM still ends it). Compute these without "
          "LAPACK (e.g. tasks.initializers.orthogonal for recurrent kernels) or run on GPU/TPU.")
