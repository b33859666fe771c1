"""Where a run's numbers go: ``metrics.jsonl`` always, and Weights & Biases.

``metrics.jsonl`` (in the run folder) gets one JSON object per logged step, flushed line by line;
a resumed run appends to it (a ``{"event": "resume", ...}`` line marks the place; readers keep
the last record of each step, see :func:`read_metrics`). W&B (``wandb``) runs ``online``,
``offline`` (files under ``RUN_DIR/wandb``; ``wandb sync`` uploads them later) or ``disabled``;
by default ``online`` when an API key is configured (``WANDB_API_KEY`` or ``~/.netrc``) and
``offline`` otherwise, so a fresh machine with no network works; ``disabled`` when wandb is not
installed (it is imported only here, when a run starts logging). A resumed run continues the same
W&B run (its id is kept in ``RUN_DIR/wandb_id``).
"""

from __future__ import annotations

import importlib.util
import json
import secrets
import string
import netrc
import os
from pathlib import Path
from typing import Any

import numpy as np

from lopt_meta.errors import ConfigError

WANDB_MODES = ("online", "offline", "disabled")
PROJECT = "lopt-meta"


def wandb_installed() -> bool:
  """Whether the ``wandb`` package can be imported (looked up without importing it)."""
  try:
    return importlib.util.find_spec("wandb") is not None
  except (ImportError, ValueError):
    return False


def default_wandb_mode() -> str:
  """``disabled`` if wandb is not installed; else ``online`` if a W&B API key is configured, else
  ``offline``."""
  if not wandb_installed():
    return "disabled"
  if os.environ.get("WANDB_API_KEY"):
    return "online"
  try:
    if netrc.netrc().authenticators("api.wandb.ai"):
      return "online"
  except (FileNotFoundError, netrc.NetrcParseError, OSError):
    pass
  return "offline"


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
  """The records of ``metrics.jsonl``, one per step (the last written wins), in step order."""
  path = Path(run_dir) / "metrics.jsonl"
  if not path.exists():
    return []
  by_step: dict[int, dict[str, Any]] = {}
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:  # a line cut by a crash
      continue
    if "step" in record and "event" not in record:
      by_step[int(record["step"])] = {**by_step.get(int(record["step"]), {}), **record}
  return [by_step[s] for s in sorted(by_step)]


def _new_run_id() -> str:
  """A W&B run id: 8 random lowercase letters and digits."""
  alphabet = string.ascii_lowercase + string.digits
  return "".join(secrets.choice(alphabet) for _ in range(8))


class RunLog:
  """``metrics.jsonl`` plus W&B for one run."""

  def __init__(self, run_dir: Path, config: dict[str, Any], *, mode: str | None, name: str,
               resume: bool = False):
    self.run_dir = Path(run_dir)
    self.mode = mode or default_wandb_mode()
    if self.mode != "disabled" and not wandb_installed():
      raise ConfigError("wandb", f"--wandb {self.mode} needs the wandb package, which is not "
                        "installed (pip install wandb, or --wandb disabled)")
    self._file = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
    self.wandb = None
    if self.mode != "disabled":
      import wandb  # imported only when used: slow, and it starts a service process
      id_file = self.run_dir / "wandb_id"
      run_id = id_file.read_text().strip() if (resume and id_file.exists()) else _new_run_id()
      id_file.write_text(run_id + "\n")
      self.wandb = wandb.init(
          project=PROJECT, name=name, id=run_id, dir=str(self.run_dir), config=config,
          mode=self.mode, resume="allow",
          settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))

  def write(self, record: dict[str, Any]) -> None:
    """Appends ``record`` to metrics.jsonl and logs its numbers (and curves) to W&B."""
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self.wandb is None or "step" not in record:
      return
    data = {}
    for key, value in record.items():
      if key in ("step", "theta"):
        continue
      if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
        data[key] = value
      elif key.endswith("_curve") and isinstance(value, dict):
        import wandb
        table = wandb.Table(columns=["inner_step", "loss"],
                            data=[[s, l] for s, l in zip(value["step"], value["loss"])])
        data[key] = wandb.plot.line(table, "inner_step", "loss", title=f"{key} at step {record['step']}")
    if data:
      self.wandb.log(data, step=int(record["step"]))

  def event(self, name: str, **fields) -> None:
    """A non-metric line (e.g. a resume) in metrics.jsonl."""
    self._file.write(json.dumps({"event": name, **fields}) + "\n")
    self._file.flush()

  def close(self) -> None:
    self._file.close()
    if self.wandb is not None:
      self.wandb.finish()
      self.wandb = None
