"""The command layer's own error (a configuration error is :class:`lopt_meta.ConfigError`, shared
by every layer)."""

from __future__ import annotations


class CheckpointError(RuntimeError):
  """A run folder holds no checkpoint, or none that can be read (not a configuration error: the
  configuration may be fine and the files damaged). The message starts with ``checkpoint:``."""

  field = "checkpoint"

  def __init__(self, message: str):
    super().__init__(f"checkpoint: {message}")
