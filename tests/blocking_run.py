"""``meta-train`` with one more registered task, ``blocking_toy``, whose step blocks in a host
callback while a file exists: a compiled step that never returns, on demand.

    python -m tests.blocking_run BLOCK_FILE train --task blocking_toy ...   # or resume RUN_DIR

Used by ``tests/test_watchdog.py`` to stop a stuck run with a signal (resume it after removing
the file).
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import tasks
from meta_train.command import cli


_LIBC = ctypes.CDLL(None)
_MUTEX = ctypes.create_string_buffer(64)  # a pthread_mutex_t, zeroed: a default (normal) mutex
_LIBC.pthread_mutex_lock(_MUTEX)


def blocking_toy(*, block_file: str, horizon: int = 20) -> tasks.UnrolledSystem:
  """``s <- 0.9 s + theta``, loss ``|s - 1|^2``. Once ``block_file`` exists, the next step blocks
  for good inside C, as a deadlocked XLA program does: its host callback locks a locked mutex
  (with the GIL released, and no signal interrupts it)."""
  block = Path(block_file)

  def wait(x):
    if block.exists():
      _LIBC.pthread_mutex_lock(_MUTEX)
    return np.zeros_like(x)

  def step(theta, s, key):
    del key
    s = 0.9 * s + theta + jax.pure_callback(wait, jax.ShapeDtypeStruct(s.shape, s.dtype), s,
                                           vmap_method="sequential")
    return s, jnp.sum((s - 1.0) ** 2)

  return tasks.UnrolledSystem(init=lambda key: jnp.zeros(2), step=step, horizon=horizon,
                              theta0=jnp.zeros(2), name="blocking_toy")


if __name__ == "__main__":
  block_file, argv = sys.argv[1], sys.argv[2:]
  tasks.register("blocking_toy", lambda **o: blocking_toy(block_file=block_file, **o),
                 kind="system")
  sys.exit(cli.main(argv))
