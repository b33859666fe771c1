"""What the processes of a run agree on: values exchanged through the coordination service, a
flag any of them raises, a step process 0 alone takes, the same configuration, and arrays
gathered to the host.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from lopt_meta.errors import ConfigError
from meta_train.command.distributed.identity import (coordination_client, is_writer, process_count,
                                                     process_index)


#: How long a process waits for the others at a point where they all meet (seconds).
WAIT_S = 300
_rounds = itertools.count()



def exchange(value: str, *, what: str = "the other processes") -> list[str]:
  """Every process's ``value``, in process order (through the coordination service's key-value
  store; every process calls this at the same points). A process that does not arrive within
  ``WAIT_S`` seconds ends the wait with an error naming ``what``."""
  if process_count() == 1:
    return [value]
  client, n = coordination_client(), next(_rounds)
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
