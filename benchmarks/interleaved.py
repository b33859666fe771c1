"""One benchmark on two source trees (before and after a change), runs interleaved.

    python -m benchmarks.interleaved --before /tmp/base --after . --rounds 3 \\
        --metric traj_steps_per_s -- benchmarks.throughput --config fmnist8 --windows 8

Each round runs the benchmark module once on each tree (``before``, then ``after``; a fresh
process each, with that tree first on ``PYTHONPATH`` and as the working directory), and reads
``--metric`` from the benchmark's final JSON line. Alternating the two spreads the machine's
drift over both. Prints a table of every run, then a final JSON line with each tree's median
and ``ratio`` = after's median / before's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import emit_json, print_table


def run_once(tree: Path, module: str, args: list[str], metric: str) -> float:
  """``metric`` from the final JSON line of ``python -m module args`` run on ``tree``."""
  env = dict(os.environ, PYTHONPATH=str(tree))
  out = subprocess.run([sys.executable, "-m", module, *args], cwd=tree, env=env,
                       capture_output=True, text=True, check=False)
  if out.returncode != 0:
    raise SystemExit(f"{module} on {tree} exited {out.returncode}:\n{out.stderr[-3000:]}")
  return float(json.loads(out.stdout.strip().splitlines()[-1])[metric])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--before", type=Path, required=True, help="the tree before the change")
  parser.add_argument("--after", type=Path, required=True, help="the tree after it")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--metric", default="traj_steps_per_s")
  parser.add_argument("command", nargs=argparse.REMAINDER,
                      help="-- MODULE [ARGS...]: the benchmark module and its arguments")
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("give the benchmark after --, e.g. -- benchmarks.throughput --windows 8")
  module, rest = command[0], command[1:]
  rows, values = [], {"before": [], "after": []}
  for r in range(args.rounds):
    for name in ("before", "after"):
      value = run_once(getattr(args, name).resolve(), module, rest, args.metric)
      values[name].append(value)
      rows.append({"round": r + 1, "tree": name, args.metric: value})
  print_table(rows, ["round", "tree", args.metric])
  before, after = (float(np.median(values[n])) for n in ("before", "after"))
  print(f"median {args.metric}: before {before:.6g}, after {after:.6g}, ratio {after / before:.3f}")
  emit_json({"benchmark": "interleaved", "module": module, "args": rest, "metric": args.metric,
             "before": values["before"], "after": values["after"], "before_median": before,
             "after_median": after, "ratio": after / before})


if __name__ == "__main__":
  main()
