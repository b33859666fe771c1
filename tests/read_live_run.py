"""Reads a run over and over, as a user watching it would, until told to stop.

    python -m tests.read_live_run WARM_RUN LIVE_RUN SCRATCH

First reads ``WARM_RUN`` (a finished run with the same settings) once through every reader, so
that everything is compiled, and writes ``SCRATCH/ready``. Then, until ``SCRATCH/stop`` exists,
it reads ``LIVE_RUN`` in a loop through ``meta_train.load_run``, ``meta-train eval``,
``meta-train export`` and ``meta-train plot`` (their outputs go to ``SCRATCH``, never to the
run). Each round's outcome is one line of ``SCRATCH/reads.jsonl``: the step read and, for a
failure, the error. Used by ``tests/test_run_readers.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
import traceback
from pathlib import Path

import meta_train
from lopt_meta.errors import ConfigError
from meta_train.command.errors import CheckpointError
from meta_train.command import cli


def _read_all(run_dir: Path, scratch: Path) -> int:
  """One round of every reader; returns the step ``load_run`` saw."""
  step = meta_train.load_run(run_dir).step
  quiet = io.StringIO()
  with contextlib.redirect_stdout(quiet):
    for argv in (["eval", str(run_dir), "--episodes", "1"],
                 ["export", str(run_dir), "--out", str(scratch / "lopt.npz"), "--overwrite"],
                 ["plot", str(run_dir), "--out", str(scratch / "runs.png")]):
      code = cli.main(argv)
      if code != 0:
        raise RuntimeError(f"meta-train {argv[0]} exited {code}")
  return step


def main(warm: Path, live: Path, scratch: Path) -> None:
  _read_all(warm, scratch)
  (scratch / "ready").write_text("")
  seen = False  # a round has read a checkpoint: from then on, none found is an error
  with open(scratch / "reads.jsonl", "a") as out:
    while not (scratch / "stop").exists():
      try:
        record = {"step": _read_all(live, scratch)}
        seen = True
      except Exception as e:  # noqa: BLE001  (recorded: the test fails on it)
        if not seen and isinstance(e, (ConfigError, CheckpointError)) and (
            "no checkpoint in" in str(e) or "not a run folder" in str(e)):
          record = {"waiting": str(e)}  # the run has not saved its first checkpoint yet
          time.sleep(0.2)
        else:
          record = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
      out.write(json.dumps(record) + "\n")
      out.flush()


if __name__ == "__main__":
  main(*(Path(a) for a in sys.argv[1:4]))
