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

The package, by concern: :mod:`.settings` (the flags and their checks), :mod:`.identity`
(who this process is), :mod:`.joining` (:func:`initialize`), :mod:`.collectives` (what the processes agree on),
:mod:`.heartbeat` (a lost process ends the others with one line).
"""

from meta_train.command.distributed.collectives import (WAIT_S, any_process, check_same, exchange,
                                                        on_process_0, to_host)
from meta_train.command.distributed.heartbeat import EXIT_PEER_LOST, Pulse, finish, set_hint
from meta_train.command.distributed.identity import is_writer, process_count, process_index, say
from meta_train.command.distributed.joining import initialize
from meta_train.command.distributed.settings import CLUSTER_VARIABLES, Distributed, check

__all__ = ["CLUSTER_VARIABLES", "Distributed", "EXIT_PEER_LOST", "Pulse", "WAIT_S", "any_process",
           "check", "check_same", "exchange", "finish", "initialize", "is_writer", "on_process_0",
           "process_count", "process_index", "say", "set_hint", "to_host"]
