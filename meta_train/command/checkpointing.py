"""Orbax checkpoints of a run: everything needed to continue it exactly.

A checkpoint (``RUN_DIR/checkpoints/<step>/``) holds the whole :class:`~meta_train.engine.trainer.
TrainState` (theta, the outer optimizer's state, every particle's worker state: inner states,
noise, PES accumulators, positions, episode lengths, data positions, and the PRNG key) plus a
JSON item with the config, the outer step and the elapsed time. Saves are synchronous and
atomic (Orbax writes to a temporary folder and renames it when complete), so a process killed
mid-save leaves the previous checkpoints untouched; old checkpoints are deleted only after a
newer one is complete (keep the last ``max_to_keep``). With several processes
(:mod:`meta_train.command.distributed`) every process saves and restores together, each its own shards of
the arrays that span processes, in a folder they all see.

Restoring reads the latest checkpoint with an abstract target: the shapes, dtypes and containers
of a fresh state, so that types survive (a run that continues), or, for a reader that builds
nothing, those the checkpoint itself records (dicts and lists, keys as their ``uint32`` data).
If it cannot be read (half written, corrupted), that is reported and the previous one is tried. Resuming moves unreadable checkpoints to
``RUN_DIR/unreadable_checkpoints/`` (nothing is deleted) before it saves the same steps again.

Only the process that owns a run (see :mod:`meta_train.command.run_lock`) writes its checkpoints.
Everything else that reads them (``load_run``, ``meta-train eval`` and ``export``) opens them with
``read_only=True``: it creates no folder, cleans no temporary folder of a save in progress, and
reads the latest *complete* checkpoint; one that the owner deletes while it is being read (an
old step beyond ``max_to_keep``) is skipped for the next latest.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from lopt_meta import absl_notes
from meta_train.command.errors import CheckpointError

PyTree = Any


def _is_key(x) -> bool:
  return isinstance(x, (jax.Array, jax.ShapeDtypeStruct)) and jax.dtypes.issubdtype(
      x.dtype, jax.dtypes.prng_key)


def to_saveable(tree: PyTree) -> PyTree:
  """PRNG keys as their ``uint32`` data (Orbax stores plain arrays)."""
  def convert(x):
    if isinstance(x, jax.ShapeDtypeStruct) and _is_key(x):
      return jax.ShapeDtypeStruct(jax.eval_shape(jax.random.key_data, x).shape, np.uint32)
    return jax.random.key_data(x) if _is_key(x) else x
  return jax.tree.map(convert, tree)


def from_saveable(tree: PyTree, like: PyTree) -> PyTree:
  """Inverse of :func:`to_saveable`, guided by ``like`` (abstract or concrete)."""
  return jax.tree.map(lambda x, l: jax.random.wrap_key_data(x) if _is_key(l) else x, tree, like)


def _abstract(tree: PyTree, shardings: PyTree | None = None) -> PyTree:
  """The restore target: shapes and dtypes of ``tree``, placed by ``shardings`` (a tree of the
  same structure; default: everything on the first device, for a single process)."""
  if shardings is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


class Checkpoints:
  """The checkpoints of one run folder.

  Args:
    run_dir: the run folder; the checkpoints live in ``run_dir/checkpoints``.
    max_to_keep: the newest checkpoints kept by :meth:`save` (older ones are deleted after a
      newer one is complete).
    read_only: open them for reading alone (every reader but the run's owner): nothing is
      created, saved, deleted or cleaned, not even the temporary folder of a save in progress.
  """

  def __init__(self, run_dir: Path, *, max_to_keep: int = 3, read_only: bool = False):
    self.directory = Path(run_dir).resolve() / "checkpoints"
    self.read_only = read_only
    # Orbax notes the read-only mode it was asked for; not a problem, so not printed.
    with absl_notes.dropped("read_only=True, setting save_interval_steps",
                            "Given directory is read only"):
      if read_only:
        options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                               enable_async_checkpointing=False,
                                               cleanup_tmp_directories=False)
      else:
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=False,
                                               cleanup_tmp_directories=True)
      self.manager = self._retry(lambda: ocp.CheckpointManager(
          self.directory, options=options,
          item_handlers={"state": ocp.StandardCheckpointHandler(),
                         "meta": ocp.JsonCheckpointHandler()}))

  def _retry(self, fn):
    """``fn()``; a reader lists the folder again (up to 20 times) when the run's owner deletes
    an old checkpoint while it is being listed."""
    for attempt in range(20):
      try:
        return fn()
      except FileNotFoundError:
        if not self.read_only or attempt == 19:
          raise
    raise AssertionError("unreachable")

  def steps(self) -> list[int]:
    """The complete checkpoints' steps, read from the folder now, in increasing order."""
    def read():
      self.manager.reload()
      return sorted(self.manager.all_steps())
    return self._retry(read)

  def save(self, step: int, state: PyTree, meta: dict[str, Any]) -> None:
    """Saves ``state`` (any pytree; keys allowed) and ``meta`` (JSON) as checkpoint ``step``."""
    if self.read_only:
      raise CheckpointError(f"{self.directory} was opened read-only; only the run's owner saves")
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(to_saveable(state)), meta=ocp.args.JsonSave(meta)),
        force=True)
    self.manager.wait_until_finished()

  def restore(self, like: PyTree | None = None, step: int | None = None, *,
              shardings: PyTree | None = None) -> tuple[PyTree, dict[str, Any], int]:
    """The state of checkpoint ``step`` (default: the latest readable one), shaped as ``like``
    and placed by ``shardings`` (a tree like ``like``; needed when the arrays span processes,
    where every process restores its own shards). Without ``like``, the state as the checkpoint
    records it: its own containers, shapes and dtypes (keys as their ``uint32`` data), on the
    first device.

    Returns:
      ``(state, meta, step)``.

    Raises:
      CheckpointError: no checkpoint, or none that can be read.
    """
    errors, tried = [], set()
    self.unreadable = []
    while True:
      candidates = [s for s in (self.steps() if step is None else [step]) if s not in tried]
      if not candidates:
        break
      s = candidates[-1]
      tried.add(s)
      try:
        abstract = (_abstract(to_saveable(like), shardings) if like is not None
                    else _abstract(self._recorded(s)))
        restored = self.manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        state = restored["state"] if like is None else from_saveable(restored["state"], like)
        return state, dict(restored["meta"]), s
      except Exception as e:  # unreadable: report it, fall back to the previous checkpoint
        if step is None and self.read_only and not (self.directory / str(s)).exists():
          continue  # deleted by the run's owner while being read (older than max_to_keep)
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        errors.append(f"step {s}: {reason}")
        self.unreadable.append(s)
        print(f"meta-train: checkpoint {s} in {self.directory} cannot be read ({reason}); "
              "trying the previous one", file=sys.stderr, flush=True)
    if not errors:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    raise CheckpointError(f"no readable checkpoint in {self.directory} ({'; '.join(errors)})")

  def _recorded(self, step: int) -> PyTree:
    """The state tree that checkpoint ``step`` records: its containers, with each array's shape
    and dtype (``jax.ShapeDtypeStruct``)."""
    metadata = self.manager.item_metadata(step)["state"]
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), metadata)

  def set_aside(self, steps: list[int]) -> list[Path]:
    """Moves unreadable checkpoints out of the way (never deletes them), so that training can
    save those steps again: ``checkpoints/<step>`` becomes ``unreadable_checkpoints/<step>``
    (with a numeric suffix if that exists already). Returns the new paths."""
    moved = []
    for s in steps:
      source = self.directory / str(s)
      if not source.exists():
        continue
      target_dir = self.directory.parent / "unreadable_checkpoints"
      target_dir.mkdir(exist_ok=True)
      target, n = target_dir / str(s), 1
      while target.exists():
        target, n = target_dir / f"{s}.{n}", n + 1
      source.rename(target)
      moved.append(target)
      print(f"meta-train: moved unreadable checkpoint {source} to {target}", file=sys.stderr,
            flush=True)
    self.manager.reload()
    return moved

  def close(self):
    self.manager.close()
