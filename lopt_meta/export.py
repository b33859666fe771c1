"""Save a trained optimizer to one self-contained file; load it back as an optax transformation.

    lopt_meta.save_optimizer("lopt.npz", lopt, theta)
    tx = lopt_meta.load_optimizer("lopt.npz")      # optax.GradientTransformationExtraArgs
    tx = optax.chain(optax.clip_by_global_norm(1.0), tx)
    updates, state = tx.update(grads, state, params, loss=loss)   # ``loss`` is optional

The file is a NumPy ``.npz`` holding the architecture (optimizer name and constructor arguments,
as JSON) and theta's arrays by key path: no pickles, readable with ``allow_pickle=False``, and
independent of the JAX version that wrote it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from lopt_meta.base import LearnedOptimizer
from lopt_meta.errors import ConfigError
from lopt_meta.registry import OPTIMIZERS

FORMAT = "lopt-meta-optimizer"
VERSION = 1
_META = "__lopt_meta__"


def save_optimizer(path: str | os.PathLike, lopt: LearnedOptimizer, theta: Any, *,
                   metadata: dict[str, Any] | None = None) -> Path:
  """Writes ``lopt``'s architecture and ``theta`` to ``path`` (``.npz``); returns the path."""
  path = Path(path)
  leaves = jax.tree_util.tree_leaves_with_path(theta)
  arrays = {f"theta{jax.tree_util.keystr(p)}": np.asarray(x) for p, x in leaves}
  meta = {"format": FORMAT, "version": VERSION, "name": lopt.name, "config": lopt.config(),
          "theta_keys": list(arrays), "metadata": metadata or {}}
  arrays[_META] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".partial")
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)  # atomic: a reader never sees half a file
  return path


def _not_an_optimizer(path: Path, why: str) -> ConfigError:
  return ConfigError("path", f"{path} is not a lopt-meta learned optimizer ({why})")


def read_optimizer(path: str | os.PathLike) -> tuple[LearnedOptimizer, Any, dict[str, Any]]:
  """``(lopt, theta, metadata)`` from a file written by :func:`save_optimizer`.

  Raises:
    ConfigError: the file is missing or is not such a file.
  """
  path = Path(path)
  if not path.is_file():
    raise _not_an_optimizer(path, "no such file")
  try:
    with np.load(path, allow_pickle=False) as npz:
      if _META not in npz.files:
        raise _not_an_optimizer(path, "no lopt-meta header")
      meta = json.loads(bytes(npz[_META]).decode())
      arrays = {k: npz[k] for k in npz.files if k != _META}
  except ConfigError:
    raise
  except Exception as e:
    raise _not_an_optimizer(path, f"unreadable: {type(e).__name__}") from None
  if meta.get("format") != FORMAT:
    raise _not_an_optimizer(path, f"format {meta.get('format')!r}")
  if meta.get("name") not in OPTIMIZERS:
    raise _not_an_optimizer(path, f"unknown optimizer {meta.get('name')!r}")
  lopt = OPTIMIZERS[meta["name"]](**meta["config"])
  template = lopt.init_theta(jax.random.key(0))
  leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
  values = []
  for p, leaf in leaves:
    key = f"theta{jax.tree_util.keystr(p)}"
    if key not in arrays or arrays[key].shape != np.shape(leaf):
      raise _not_an_optimizer(path, f"theta entry {key} missing or misshapen")
    values.append(jax.numpy.asarray(arrays[key], dtype=leaf.dtype))
  return lopt, jax.tree_util.tree_unflatten(treedef, values), meta.get("metadata", {})


def load_optimizer(path: str | os.PathLike, *,
                   num_steps: int | None = None) -> optax.GradientTransformationExtraArgs:
  """The optimizer saved at ``path``, as an optax transformation (theta fixed).

  ``update(grads, state, params, loss=None)`` needs ``params``; it composes in ``optax.chain``.
  ``num_steps``: the training run's length, for optimizers that condition on progress.
  """
  lopt, theta, _ = read_optimizer(path)
  return lopt.as_optax(theta, num_steps=num_steps)
