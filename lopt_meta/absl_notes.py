"""Notes that libraries log through absl about a choice we made, dropped where we make it.

Orbax and tensorflow-datasets log (through ``absl.logging``, i.e. Python's ``"absl"`` logger)
warnings that describe the mode we asked for, such as a checkpoint folder opened read-only, or
a tfds folder checked for a prepared dataset before we fall back to the raw files. They are not
problems, and a run should print nothing a user has to puzzle over. :func:`dropped` removes the
records whose message contains one of the given fragments, for the duration of a ``with`` block;
every other record passes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


class _Drop(logging.Filter):

  def __init__(self, fragments: tuple[str, ...]):
    super().__init__()
    self.fragments = fragments

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(fragment in message for fragment in self.fragments)


@contextlib.contextmanager
def dropped(*fragments: str) -> Iterator[None]:
  """Within the block, absl log records containing any of ``fragments`` are not emitted."""
  logger, drop = logging.getLogger("absl"), _Drop(fragments)
  logger.addFilter(drop)
  try:
    yield
  finally:
    logger.removeFilter(drop)
