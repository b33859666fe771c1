"""Several processes, one run: JAX's multi-controller runtime (``jax.distributed``).

Every process runs the same program. :func:`initialize` joins them before any other JAX call:
with ``--coordinator-address HOST:PORT --num-processes N --process-id I`` given, or, with none
of them, from a cluster environment that ``jax.distributed.initialize()`` recognizes (SLURM,
Open MPI) when that environment starts more than one process, or with ``--coordinator-address
auto`` from whatever ``jax.distributed.initialize()`` detects (Cloud TPU pods, Kubernetes too).
A plain single-process run is never joined to anything. On the CPU the collectives go through
gloo.

After it, ``jax.devices()`` lists the devices of every process: the pairs axis is sharded over
all of them (:mod:`meta_train.engine.sharding`), theta is replicated, and the estimate is the
single-process one up to float summation order. Process 0 writes ``metrics.jsonl``, the
progress display and W&B (:func:`is_writer`); every process takes part in Orbax saves and
restores. A process that dies is noticed by the others through the coordination service's
heartbeats (``heartbeat_timeout_s``), which end them with JAX's error; a coordinator that cannot
be reached ends ``initialize`` after ``init_timeout_s``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import socket
import sys
import threading
import time
from typing import Any

from lopt_meta.errors import ConfigError, check_positive_int

#: Environments that ``jax.distributed.initialize()`` detects by itself: the variables it needs
#: there (as its detection reads them), the first of them the number of processes.
CLUSTER_VARIABLES = {
    "SLURM": ("SLURM_NTASKS", "SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID",
              "SLURM_LOCALID"),
    "Open MPI": ("OMPI_COMM_WORLD_SIZE", "OMPI_MCA_orte_hnp_uri"),
}


@dataclasses.dataclass(frozen=True)
class Distributed:
  """The processes of this run (all given, or none: then a cluster environment is used)."""
  coordinator_address: str | None = None
  """HOST:PORT where process 0 listens for the others (the same on every process); 'auto': all three from the cluster (jax.distributed.initialize() detection: TPU pods, Kubernetes, SLURM, Open MPI)."""
  num_processes: int | None = None
  """How many processes the run has (one per host, or one per accelerator)."""
  process_id: int | None = None
  """This process's index, 0..num_processes-1 (0 writes the logs)."""
  init_timeout_s: int = 120
  """Give up joining the others after this many seconds."""
  heartbeat_timeout_s: int = 30
  """A process silent for this many seconds is taken as dead, and the others stop."""

  @property
  def given(self) -> bool:
    return not self.auto and any(v is not None for v in (self.coordinator_address,
                                                         self.num_processes, self.process_id))

  @property
  def auto(self) -> bool:
    return self.coordinator_address == "auto"


def check(settings: Distributed) -> None:
  """Raises ConfigError for settings that cannot start a run (before anything starts)."""
  values = (settings.coordinator_address, settings.num_processes, settings.process_id)
  if settings.auto and (settings.num_processes is not None or settings.process_id is not None):
    raise ConfigError("coordinator_address", "'auto' takes the number of processes and this "
                      "process's id from the cluster; leave out --num-processes and --process-id")
  if settings.given and any(v is None for v in values):
    missing = [name for name, v in zip(("coordinator_address", "num_processes", "process_id"),
                                       values) if v is None]
    raise ConfigError(missing[0], "several processes need --coordinator-address HOST:PORT, "
                      f"--num-processes N and --process-id I together; missing: "
                      f"{', '.join('--' + m.replace('_', '-') for m in missing)}")
  for field in ("init_timeout_s", "heartbeat_timeout_s"):
    value = getattr(settings, field)
    check_positive_int(field, value, "seconds")
  if not settings.given:
    return
  address = settings.coordinator_address
  match = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\s]+):(\d+)", address or "")
  if match is None or not 0 < int(match.group(2)) < 65536:
    raise ConfigError("coordinator_address", f"must be HOST:PORT with a port in 1..65535 "
                      f"(e.g. 10.0.0.1:1234); got {address!r}")
  n, i = settings.num_processes, settings.process_id
  check_positive_int("num_processes", n)
  if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
    raise ConfigError("process_id", f"must be one of 0..{n - 1} (--num-processes {n}); got {i!r}")


def _cluster_processes() -> int:
  """The number of processes a recognized cluster environment started (1 if none)."""
  for variables in CLUSTER_VARIABLES.values():
    value = os.environ.get(variables[0], "")
    if value.isdigit() and all(v in os.environ for v in variables):
      return int(value)
  return 1


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
  if not settings.given and not settings.auto and _cluster_processes() <= 1:
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
  global PULSE
  if jax.process_count() > 1:
    PULSE = Pulse(settings.heartbeat_timeout_s).start()
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


#: How long a process waits for the others at a point where they all meet (seconds).
WAIT_S = 300
_rounds = itertools.count()


def _client():
  from jax._src import distributed as jax_distributed
  return jax_distributed.global_state.client


def exchange(value: str, *, what: str = "the other processes") -> list[str]:
  """Every process's ``value``, in process order (through the coordination service's key-value
  store; every process calls this at the same points). A process that does not arrive within
  ``WAIT_S`` seconds ends the wait with an error naming ``what``."""
  if process_count() == 1:
    return [value]
  client, n = _client(), next(_rounds)
  client.key_value_set(f"lopt_meta/{n}/{process_index()}", value)
  if n >= 2:  # everyone has read round n - 2 before anyone could finish round n - 1
    client.key_value_delete(f"lopt_meta/{n - 2}/{process_index()}")
  values = []
  for i in range(process_count()):
    try:
      values.append(client.blocking_key_value_get(f"lopt_meta/{n}/{i}", WAIT_S * 1000))
    except Exception as e:  # noqa: BLE001 - the runtime's errors have no common type
      raise RuntimeError(f"meta-train: process {i} did not reach {what} within {WAIT_S} s "
                         f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__}); "
                         "it has probably died; resume the run from its last checkpoint") from None
  return values


def any_process(flag: bool, *, what: str = "the end of a chunk of outer steps") -> bool:
  """Whether ``flag`` is true on any process (all processes call it together)."""
  return any(v == "1" for v in exchange("1" if flag else "0", what=what))


def on_process_0(fn, what: str):
  """Runs ``fn()`` on process 0 only; a ConfigError it raises is raised on every process (so all
  of them stop with the same message). Returns ``fn()``'s result on process 0, else None."""
  result, error = None, ""
  if is_writer():
    try:
      result = fn()
    except ConfigError as e:
      error = json.dumps([e.field, str(e)[len(e.field) + 2:]])
  first = exchange(error, what=what)[0]
  if first:
    field, message = json.loads(first)
    raise ConfigError(field, message)
  return result


def check_same(config: dict[str, Any]) -> None:
  """Raises ConfigError (on every process) unless all processes run the same configuration."""
  if process_count() == 1:
    return
  mine = json.dumps(config, sort_keys=True)
  values = exchange(mine, what="the configuration check")
  for i, value in enumerate(values):
    if value != values[0]:
      theirs, first = _flat(json.loads(value)), _flat(json.loads(values[0]))
      fields = sorted(k for k in set(theirs) | set(first) if theirs.get(k) != first.get(k))
      raise ConfigError(fields[0] if fields else "config",
                        f"process {i} was started with a different configuration than process 0 "
                        f"(differs in: {', '.join(fields)}); start every process with the same "
                        "settings")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict) and k in ("task", "estimator", "outer", "run"):
      out.update(_flat(v, ""))
    else:
      out[prefix + k] = json.dumps(v, sort_keys=True)
  return out


def to_host(tree):
  """``tree``'s arrays as numpy on every process: local and replicated arrays are read where they
  are, arrays sharded over several processes are gathered (a collective: every process calls it)."""
  import jax
  import numpy as np
  from jax.experimental import multihost_utils

  def fetch(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(fetch, tree)


#: Exit status of a process that ends because another process of its run stopped answering.
EXIT_PEER_LOST = 3


class Pulse:
  """Tells the processes of a run that the others are alive, and ends this one when one is not.

  A thread increments this process's counter in the coordination service's key-value store every
  ``interval_s`` and reads the others'. A counter that has not moved for ``timeout_s`` (measured
  on this process's clock), or a coordinator that no longer answers (process 0 is gone), means a
  process died, was killed or is stuck: this process prints one line saying which and how to
  continue (:attr:`hint`), and ends with :data:`EXIT_PEER_LOST` instead of waiting forever in a
  collective. A process that ends its run normally says so first (:meth:`stop`), so the others
  do not take it for dead.
  """

  def __init__(self, timeout_s: float, interval_s: float | None = None, exit=os._exit):
    self.timeout_s = float(timeout_s)
    self.interval_s = interval_s if interval_s is not None else max(0.5, self.timeout_s / 10)
    self.hint = "resume the run from its last checkpoint with the same number of processes"
    self._exit = exit
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._beat, name="meta-train-pulse", daemon=True)

  def start(self) -> "Pulse":
    self._thread.start()
    return self

  def stop(self, finished: bool = True) -> None:
    """Stops the thread; ``finished``: this process ended its run (the others will not wait)."""
    if self._stop.is_set():
      return
    self._stop.set()
    self._thread.join(timeout=5)
    if finished:
      try:
        _client().key_value_set(f"lopt_meta/finished/{process_index()}", "1", allow_overwrite=True)
      except Exception:  # noqa: BLE001 - the coordinator may already be gone at the very end
        pass

  def _beat(self) -> None:
    me, n = process_index(), process_count()
    last = {i: (None, time.monotonic()) for i in range(n) if i != me}
    while not self._stop.wait(self.interval_s):
      try:
        client = _client()
        client.key_value_increment(f"lopt_meta/pulse/{me}", 1)
        for i, (seen, since) in list(last.items()):
          try:
            value = client.key_value_try_get(f"lopt_meta/pulse/{i}")
          except Exception as e:  # noqa: BLE001 - not written yet: NOT_FOUND
            if "NOT_FOUND" not in str(e).upper():
              raise
            value = None
          now = time.monotonic()
          if value != seen:
            last[i] = (value, now)
          elif now - since > self.timeout_s and not self._finished(client, i):
            self._lost(f"process {i} of {n} has not answered for {now - since:.0f} s (it died, "
                       "was killed, or is stuck)")
            return
      except Exception as e:  # noqa: BLE001 - the coordination service itself is gone
        if self._stop.is_set():
          return
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        self._lost(f"the run's coordinator (process 0) no longer answers ({reason})")
        return

  @staticmethod
  def _finished(client, i: int) -> bool:
    try:
      return client.key_value_try_get(f"lopt_meta/finished/{i}") == "1"
    except Exception:  # noqa: BLE001
      return False

  def _lost(self, what: str) -> None:
    if self._stop.is_set():
      return
    print(f"meta-train: error: {what}; stopping process {process_index()} too (exit status "
          f"{EXIT_PEER_LOST}); {self.hint}", file=sys.stderr, flush=True)
    self._exit(EXIT_PEER_LOST)


PULSE: Pulse | None = None


def finish(finished: bool = True) -> None:
  """Stops this process's :class:`Pulse` (see :meth:`Pulse.stop`), if it runs."""
  if PULSE is not None:
    PULSE.stop(finished)


def set_hint(hint: str) -> None:
  """What the others' error line tells the user to do if a process is lost (e.g. how to resume)."""
  if PULSE is not None:
    PULSE.hint = hint


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
