"""Particles on several devices: the pairs axis sharded over a one-axis mesh.

Every worker array has a leading pairs axis ``[P, ...]``. With more than one device, each window
runs under ``jax.shard_map`` over the mesh axis ``"pairs"``: every device advances its ``P / D``
pairs (both particles of a pair always on one device), with theta and the data replicated; the
pair keys are drawn globally first, so the estimate equals the single-device one up to float
summation order, and the sum over pairs becomes an all-reduce. Custom kernels (the fused
learned-optimizer update) run locally on each device's shard.

Several processes or hosts (:mod:`meta_train.command.distributed`): every process runs the same program
after ``jax.distributed.initialize()``; ``jax.devices()`` then lists every process's devices, the
mesh spans them all, and each process loads its own copy of the data. Process 0 writes the logs;
every process takes part in each checkpoint save and restore.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from lopt_meta.errors import ConfigError

AXIS = "pairs"
SHARDED = PartitionSpec(AXIS)
REPLICATED = PartitionSpec()


def pairs_mesh(num_pairs: int, devices: Sequence[jax.Device] | None = None) -> Mesh | None:
  """A mesh over ``devices`` (default: all of ``jax.devices()``) for ``num_pairs`` pairs, or
  ``None`` for a single device.

  Raises:
    ConfigError: the pairs cannot be split evenly over the devices.
  """
  devices = list(jax.devices()) if devices is None else list(devices)
  if len(devices) <= 1:
    return None
  if num_pairs % len(devices):
    step = 2 * len(devices)
    raise ConfigError("num_particles", f"{2 * num_pairs} particles ({num_pairs} pairs) cannot be "
                      f"split evenly over {len(devices)} devices; use a multiple of {step}")
  return Mesh(np.asarray(devices), (AXIS,))
