"""Who this process is in its run (``jax.process_index``/``process_count``), whether it writes
the run's logs, and the coordination service's client that the processes meet through.

The bottom of the package: the other modules import it, it imports none of them.
"""

from __future__ import annotations

import sys


def process_index() -> int:
  import jax
  return jax.process_index()


def process_count() -> int:
  import jax
  return jax.process_count()


def is_writer() -> bool:
  """Whether this process writes the run's logs (process 0; the only one in a plain run)."""
  return process_index() == 0


def say(line: str, *, file=None) -> None:
  """Prints ``line`` on process 0 only."""
  if is_writer():
    print(line, file=file or sys.stdout, flush=True)


def coordination_client():
  """The coordination service's client of ``jax.distributed`` (None before it is joined)."""
  from jax._src import distributed as jax_distributed
  return jax_distributed.global_state.client
