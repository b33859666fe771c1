"""The ablation table of an AnchoredAdam: each design choice on and off, on the held-out bench.

    python -m benchmarks.ablation --best RUN/best.npz --last RUN_OR_NPZ [--seeds 3]
        [--paths kernel,plain] [--tasks NAME ...] [--results benchmarks/results/ablation/X.json]

Every variant runs ``meta-train bench``'s suite (:data:`tasks.heldout.SUITE`, each task told its
length) for seeds ``0..K-1`` against the same tuned baselines (tuned once per task and seed,
:func:`meta_train.command.bench.bench_task`'s cache). The variants, from the optimizer's
configuration in ``--best`` (its base rate ``lr``):

* ``adam``: Adam at ``lr`` (the base without muP: ``mup=False``, nothing learned);
* ``base``: Adam x muP at ``lr`` (AnchoredAdam before meta-training, exactly);
* ``+multiplier``: the meta-trained per-tensor multiplier, the per-parameter correction off;
* ``+correction``: the meta-trained optimizer whole (``--best``);
* ``-progress``: the same with its progress features (t/T) held at t = 0, as without
  ``num_steps``;
* ``last``: the run's last theta (``--last``: a run folder, exported now, or an ``.npz``) instead
  of the one meta-validation chose.

The learned parts are switched off at evaluation, not meta-trained apart (one meta-training run
per variant was not affordable here): a variant shows what each part of *this* theta does.
``--paths`` runs the full optimizer on the fused-kernel and the plain-XLA path (the others use no
kernel). Prints a table of the geometric means (mean and [min, max] over seeds) and a JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import jax

import lopt_meta
from lopt_meta import kernels
from meta_train.command import bench
from tasks import heldout


@contextlib.contextmanager
def _path(name: str):
  """The fused kernel (``kernel``) or plain XLA (``plain``: ``LOPT_META_KERNELS=0``)."""
  if name == "kernel":
    yield
    return
  old = os.environ.get("LOPT_META_KERNELS")
  os.environ["LOPT_META_KERNELS"] = "0"
  try:
    yield
  finally:
    if old is None:
      del os.environ["LOPT_META_KERNELS"]
    else:
      os.environ["LOPT_META_KERNELS"] = old


def variants(best: str, last: str | None):
  """``[(name, path, lopt, theta)]`` (see the module docstring)."""
  lopt, theta = lopt_meta.read_optimizer(best)[:2]
  if lopt.name != "anchored_adam":
    raise SystemExit(f"ablation: {best} holds {lopt.name!r}, not anchored_adam")
  config = lopt.config()
  out = []
  plain_adam = lopt_meta.AnchoredAdam(**{**config, "mup": False, "multiplier": False,
                                         "correction": 0.0})
  out.append(("adam", "kernel", plain_adam, {}))
  base = lopt_meta.AnchoredAdam(**{**config, "multiplier": False, "correction": 0.0})
  out.append(("base", "kernel", base, {}))
  if "tensor" in theta:
    mult = lopt_meta.AnchoredAdam(**{**config, "correction": 0.0})
    out.append(("+multiplier", "kernel", mult, {"tensor": theta["tensor"]}))
  out.append(("+correction", "kernel", lopt, theta))
  out.append(("-progress", "kernel", lopt_meta.AnchoredAdam(**{**config, "progress": False}),
              theta))
  if last is not None:
    if last.endswith(".npz"):
      _, last_theta = lopt_meta.read_optimizer(last)[:2]
    else:
      from meta_train import load_run
      last_theta = load_run(last).theta
    out.append(("last", "kernel", lopt, last_theta))
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--best", required=True, help="the meta-validated theta (.npz)")
  parser.add_argument("--last", default=None, help="the run's last theta (run folder or .npz)")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--paths", default="kernel,plain")
  parser.add_argument("--tasks", nargs="*", default=None)
  parser.add_argument("--steps-scale", type=float, default=1.0)
  parser.add_argument("--data-dir", default=None)
  parser.add_argument("--results", default=None, help="write the whole result to this .json")
  parser.add_argument("--baselines", default=None,
                      help="a .json of tuned baselines: read if it exists, written after tuning")
  parser.add_argument("--only-baselines", action="store_true",
                      help="tune the baselines (into --baselines) and stop")
  args = parser.parse_args()
  suite = heldout.suite(tuple(args.tasks) if args.tasks else None, steps_scale=args.steps_scale)
  cache = bench.read_baselines(args.baselines)
  if args.only_baselines:
    for seed in range(args.seeds):
      for held in suite:
        key = (held.name, held.steps, seed)
        if key not in cache:
          cache[key] = bench.tuned_baselines(held, held.build(args.data_dir), seed=seed)
          bench.write_baselines(args.baselines, cache)
          print(f"ablation: tuned {held.name} (seed {seed})", file=sys.stderr, flush=True)
    return
  runs = variants(args.best, args.last)
  for path in args.paths.split(","):
    if path not in ("kernel", "plain"):
      raise SystemExit(f"--paths: kernel or plain; got {path!r}")
    if path == "plain":
      runs.append(("+correction (plain XLA)", "plain", runs[[r[0] for r in runs].index(
          "+correction")][2], runs[[r[0] for r in runs].index("+correction")][3]))
  if "kernel" in args.paths.split(",") and not kernels.available():
    print("ablation: the fused kernel is unavailable here; 'kernel' rows run plain XLA",
          file=sys.stderr)
  results = {}
  for name, path, lopt, theta in runs:
    with _path(path):
      result = bench.run_bench(
          suite, lopt, theta, name, seeds=args.seeds, data_dir=args.data_dir, cache=cache,
          log=lambda row, name=name: print(
              f"ablation: {name}: {row['task']} (seed {row['seed']}): {row['vs_adam']:.3f}x tuned "
              f"Adam ({row['seconds']:.0f} s)", file=sys.stderr, flush=True))
    results[name] = result
    bench.write_baselines(args.baselines, cache)
  head = (f"{'variant':26s} {'vs tuned Adam':>20s} {'vs tuned w+cos':>20s} "
          f"{'vs Adam one rate':>20s} {'vs w+cos one rate':>20s} {'div':>4s} {'s':>6s}")
  print(head)
  print("-" * len(head))
  for name, result in results.items():
    s = result["summary"]
    cells = []
    for key in bench.SPREAD_KEYS:
      lo, hi = s[key + "_spread"]
      cells.append(f"{s[key]:.3f} [{lo:.2f},{hi:.2f}]".rjust(20))
    print(f"{name:26s} {' '.join(cells)} {s['diverged']:4d} {s['seconds']:6.0f}")
  first = next(iter(results.values()))["summary"]
  print(f"one rate for the suite: Adam {first['adam_one_rate_lr']} "
        f"({first['adam_one_rate_vs_adam']:.3f}x tuned Adam), warmup-cosine "
        f"{first['adam_wc_one_rate_lr']} ({first['adam_wc_one_rate_vs_adam']:.3f}x)")
  summary = {name: result["summary"] for name, result in results.items()}
  if args.results:
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": sys.argv, "devices": str(jax.devices()),
                                "kernel_isa": kernels.isa() if kernels.available() else None,
                                "summary": summary,
                                "rows": {n: [{k: v for k, v in r.items() if k != "curves"}
                                             for r in res["rows"]]
                                         for n, res in results.items()}}, indent=1) + "\n")
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
