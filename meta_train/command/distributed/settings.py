"""The distributed settings of a run (``--coordinator-address`` and the rest) and their checks,
and the cluster environments ``jax.distributed.initialize()`` detects by itself.
"""

from __future__ import annotations

import dataclasses
import os
import re

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


def cluster_processes() -> int:
  """The number of processes a recognized cluster environment started (1 if none)."""
  for variables in CLUSTER_VARIABLES.values():
    value = os.environ.get(variables[0], "")
    if value.isdigit() and all(v in os.environ for v in variables):
      return int(value)
  return 1
