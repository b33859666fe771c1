"""Helpers for trying several processes of a run on one machine (tests and benchmarks)."""

from __future__ import annotations

import os
import re
import socket


def free_local_port() -> int:
  """A TCP port on 127.0.0.1 that is free now: for a coordinator of processes on one machine."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def local_cpu_env(devices: int, **extra: str) -> dict[str, str]:
  """This process's environment for a child process on the CPU with ``devices`` devices
  (``--xla_force_host_platform_device_count``, replacing any count already in ``XLA_FLAGS``),
  plus ``extra`` variables: one process of a run tried out on one machine."""
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
  return dict(os.environ, JAX_PLATFORMS="cpu", **extra,
              XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices}".strip())
