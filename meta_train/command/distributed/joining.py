"""Joining the processes of a run (:func:`initialize`); who this process is then is
:mod:`.identity`.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any

from lopt_meta.errors import ConfigError
from meta_train.command.distributed import heartbeat
from meta_train.command.distributed.settings import Distributed, check, cluster_processes


def initialize(settings: Distributed | None = None) -> bool:
  """Joins this process to the others of its run; returns whether it did (False: one process).

  Call it before any other JAX call. Given flags are used as they are; without them, a cluster
  environment that started more than one process (SLURM ``srun``, Open MPI ``mpirun``) is
  joined by ``jax.distributed.initialize()``'s own detection, as is any cluster it detects with
  ``coordinator_address="auto"``. Nothing happens otherwise.

  Raises:
    ConfigError: inconsistent flags, JAX already started, or the coordinator not reachable
      within ``init_timeout_s``.
  """
  import jax
  from jax._src import distributed as jax_distributed  # whether it already ran
  settings = settings or Distributed()
  check(settings)
  if jax_distributed.global_state.client is not None:
    return jax.process_count() > 1
  if not settings.given and not settings.auto and cluster_processes() <= 1:
    return False
  from jax._src import xla_bridge
  if xla_bridge.backends_are_initialized():
    raise ConfigError("coordinator_address", "JAX had already started in this process; several "
                      "processes must be joined before any other JAX call")
  if _cpu_only():
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs: dict[str, Any] = {"initialization_timeout": settings.init_timeout_s,
                            # JAX's own heartbeats are the backstop of the Pulse (which ends
                            # a process with a message of its own, after heartbeat_timeout_s)
                            "heartbeat_timeout_seconds": 2 * settings.heartbeat_timeout_s + 5,
                            "shutdown_timeout_seconds": max(settings.heartbeat_timeout_s, 10)}
  if settings.given:
    kwargs.update(coordinator_address=settings.coordinator_address,
                  num_processes=settings.num_processes, process_id=settings.process_id)
  where = settings.coordinator_address if settings.given else "the cluster's coordinator"
  if settings.given:  # JAX ends the process without a word when it cannot connect: look first
    host, port = settings.coordinator_address.rsplit(":", 1)
    host, port = host.strip("[]"), int(port)
    if settings.process_id == 0:
      _check_port_free(port, settings.coordinator_address)
    else:
      _wait_for_coordinator(host, port, settings.init_timeout_s, settings.coordinator_address)
  if settings.given:
    print(f"meta-train: process {settings.process_id} of {settings.num_processes} joining the run "
          f"at {settings.coordinator_address} (waiting up to {settings.init_timeout_s} s for the "
          "others)", file=sys.stderr, flush=True)
  try:
    jax.distributed.initialize(**kwargs)
  except Exception as e:  # noqa: BLE001 - JAX raises several kinds; one clear message
    reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    raise ConfigError("coordinator_address", f"could not join the run's processes at {where} "
                      f"within {settings.init_timeout_s} s ({reason}); start every process with "
                      "the same --coordinator-address (process 0 listens there) and "
                      "--num-processes, each with its own --process-id") from None
  if jax.process_count() > 1:
    heartbeat.start(settings.heartbeat_timeout_s)
  return True


def _check_port_free(port: int, address: str) -> None:
  """Raises ConfigError if process 0 cannot listen on ``port`` (another program holds it)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      s.bind(("", port))
    except OSError as e:
      raise ConfigError("coordinator_address", f"process 0 cannot listen on port {port} of "
                        f"{address} ({e.strerror or e}); choose a free port") from None


def _wait_for_coordinator(host: str, port: int, timeout_s: float, address: str) -> None:
  """Waits until process 0 accepts connections at ``host:port``; raises ConfigError after
  ``timeout_s`` seconds (a wrong address, or process 0 never started)."""
  deadline = time.monotonic() + timeout_s
  reason = "nothing listens there"
  while True:
    try:
      with socket.create_connection((host, port), timeout=2):
        return
    except OSError as e:
      reason = e.strerror or str(e) or type(e).__name__
    if time.monotonic() >= deadline:
      raise ConfigError("coordinator_address", f"no coordinator answered at {address} within "
                        f"{timeout_s:g} s ({reason}); start process 0 (--process-id 0) with the "
                        "same --coordinator-address, or correct the address") from None
    time.sleep(0.5)


def _cpu_only() -> bool:
  """Whether JAX will run on the CPU (asked without starting a backend)."""
  import jax
  platforms = (jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS") or "").lower()
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  import importlib.util
  return not any(importlib.util.find_spec(name) is not None
                 for name in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                              "libtpu", "jax_rocm7_plugin"))
