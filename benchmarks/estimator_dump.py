"""A bit-exact dump of every estimator: the arrays a refactor of the engine must leave unchanged.

    python -m benchmarks.estimator_dump --out dump.npz [--devices N]
    python -m benchmarks.estimator_dump --compare a.npz b.npz

Each case is an estimator on a system, run through a :class:`~meta_train.engine.trainer.Trainer`
(Adam, clipped) for ``STEPS`` outer steps from one seed:

* every estimator (``nres``, ``pes``, ``gpes`` with ``K``, ``full_es``, ``tes``, ``tbptt``) on
  Lorenz (``T = 24``, random starts, ``W = 5``: ``W`` does not divide ``T``, so windows straddle
  episode boundaries and run the general window form; ``K = 7`` draws inside windows) and on a
  learned optimizer (the default ``mlp``) training a small digits MLP (hidden ``(8,)``, ``T = 40``,
  ``W = 10``: step-unlocked on the window grid, so windows run the events-on-the-first-step form;
  ``K = 20``);
* a two-member :class:`~meta_train.estimators.OverTasks` (NRES and GPES on two Lorenz variants,
  both drawn at every step: the members' windows under ``lax.switch`` and the loss weights).

Saved per case, with flat keys ``CASE/WHAT/PATH`` (``PATH``: the leaf's pytree path; typed keys
as their ``uint32`` data): ``init`` (the trainer's state after ``init``), ``final`` (its state
after the ``STEPS`` steps of one ``Trainer.run``, whose ``lax.scan`` runs them), and per step
``step{i}/metrics`` and ``step{i}/grad`` (the estimate, recorded by an identity transformation
chained before the outer optimizer: :func:`grad_record`). ``--devices N`` runs on ``N``
simulated CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``, set before jax is
imported), over which the estimators split their pairs.

``--compare A B`` compares two dumps bitwise (key sets, dtypes, shapes and bytes; a NaN equals a
NaN of the same bits), prints the arrays that differ and exits 1 if any do. The last line of
stdout is one JSON object with the counts.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, NamedTuple

STEPS = 3
SEED = 0


def cases():
  """``{name: estimator}``, built in a fixed order (each builds its own mesh over all devices)."""
  import lopt_meta
  import tasks
  from meta_train import estimators

  inner_task = getattr(tasks, "build", None) or tasks.get_inner_task  # today's name, or 2026-12-06's
  lorenz = tasks.get("lorenz", horizon=24, init_sigma=0.5)
  digits = tasks.learned_optimizer_system(
      inner_task("digits_mlp", hidden_sizes=(8,), batch_size=32),
      lopt_meta.get_optimizer("mlp"), horizon=40)
  es = dict(num_particles=8)
  out = {}
  for system, sigma, W, K in ((lorenz, 0.04, 5, 7), (digits, 0.01, 10, 20)):
    tag = "lorenz" if system is lorenz else "digits"
    out[f"nres/{tag}"] = estimators.make("nres", system, sigma=sigma, unroll_length=W, **es)
    out[f"pes/{tag}"] = estimators.make("pes", system, sigma=sigma, unroll_length=W, **es)
    out[f"gpes/{tag}"] = estimators.make("gpes", system, sigma=sigma, unroll_length=W, K=K, **es)
    out[f"full_es/{tag}"] = estimators.make("full_es", system, sigma=sigma, **es)
    out[f"tes/{tag}"] = estimators.make("tes", system, sigma=sigma, unroll_length=W, **es)
    out[f"tbptt/{tag}"] = estimators.make("tbptt", system, unroll_length=W, **es)
  other = tasks.get("lorenz", horizon=30, init_sigma=1.0)
  out["over_tasks/lorenz"] = estimators.OverTasks(
      {"a": estimators.NRES(lorenz, sigma=0.04, unroll_length=6, **es),
       "b": estimators.GPES(other, sigma=0.04, unroll_length=5, K=4, **es)}, tasks_per_step=2)
  return out


def flat_arrays(prefix: str, tree) -> dict:
  """``{prefix/PATH: numpy array}`` for every leaf of ``tree`` (typed keys as their data)."""
  import jax
  import numpy as np

  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    out[f"{prefix}/{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
  return out


class GradRecord(NamedTuple):
  """The state of :func:`grad_record`.

  Attributes:
    count: ``int32 []``, updates seen.
    grads: theta-like, leaves ``[STEPS, ...]``: row ``i`` is update ``i`` as it came in.
  """
  count: Any
  grads: Any


def grad_record(num_steps: int):
  """An optax transformation that passes updates through unchanged and keeps the first
  ``num_steps`` of them in its state (the trainer's estimates, when chained first)."""
  import jax
  import jax.numpy as jnp
  import optax

  def init(params):
    return GradRecord(jnp.zeros((), jnp.int32), jax.tree.map(
        lambda p: jnp.zeros((num_steps,) + jnp.shape(p), jnp.result_type(p)), params))

  def update(updates, state, params=None):
    del params
    grads = jax.tree.map(lambda rows, g: rows.at[state.count].set(g), state.grads, updates)
    return updates, GradRecord(state.count + 1, grads)
  return optax.GradientTransformation(init, update)


def dump(out_path: str) -> dict:
  """Runs every case and saves its arrays to ``out_path``; returns a summary."""
  import jax
  import numpy as np
  import optax

  from meta_train.engine.trainer import Trainer, outer_optimizer

  arrays, timings = {}, {}
  for name, est in cases().items():
    start = time.perf_counter()
    trainer = Trainer(est, optax.chain(grad_record(STEPS),
                                       outer_optimizer("adam", 1e-2, grad_clip=1.0)))
    state = trainer.init(jax.random.key(SEED), est.system.theta0)
    record = lambda s: s.replace(opt_state=s.opt_state[1])  # the outer optimizer's state only
    arrays.update(flat_arrays(f"{name}/init", record(state)))
    state, metrics = trainer.run(state, STEPS)
    arrays.update(flat_arrays(f"{name}/final", record(state)))
    for i in range(STEPS):
      arrays.update(flat_arrays(f"{name}/step{i}/metrics", {k: v[i] for k, v in metrics.items()}))
      arrays.update(flat_arrays(f"{name}/step{i}/grad",
                                jax.tree.map(lambda g, i=i: g[i], state.opt_state[0].grads)))
    timings[name] = round(time.perf_counter() - start, 1)
    print(f"{name}: {timings[name]} s", flush=True)
  np.savez(out_path, **arrays)
  return {"out": out_path, "devices": len(jax.devices()), "cases": len(timings),
          "arrays": len(arrays), "seconds": timings}


def compare(path_a: str, path_b: str) -> dict:
  """The arrays of two dumps that differ bitwise (or exist in one only)."""
  import numpy as np

  with np.load(path_a) as fa, np.load(path_b) as fb:
    a, b = dict(fa), dict(fb)
  only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
  differ = []
  for key in sorted(set(a) & set(b)):
    x, y = a[key], b[key]
    if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
      differ.append(key)
  for key in only_a:
    print(f"only in {path_a}: {key}")
  for key in only_b:
    print(f"only in {path_b}: {key}")
  for key in differ:
    x, y = a[key], b[key]
    detail = (f"{x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}"
              if x.dtype != y.dtype or x.shape != y.shape else
              f"{int(np.sum(x != y))} of {x.size} elements")
    print(f"differs: {key} ({detail})")
  print(f"{len(a)} arrays in {path_a}, {len(b)} in {path_b}; {len(differ)} differ, "
        f"{len(only_a)} only in the first, {len(only_b)} only in the second")
  return {"arrays_a": len(a), "arrays_b": len(b), "common": len(set(a) & set(b)),
          "differ": len(differ), "only_a": len(only_a), "only_b": len(only_b)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", help="the .npz file to write")
  parser.add_argument("--devices", type=int, default=1, help="simulated CPU devices (default 1)")
  parser.add_argument("--compare", nargs=2, metavar=("A", "B"),
                      help="compare two dumps instead of running")
  args = parser.parse_args(argv)
  if args.compare is None and args.out is None:
    parser.error("give --out FILE.npz or --compare A B")
  if args.compare is None:
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = (
        f"{flags} --xla_force_host_platform_device_count={args.devices}".strip())
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from benchmarks.common import emit_json  # imports jax: after XLA_FLAGS

  if args.compare is not None:
    record = compare(*args.compare)
    emit_json(record)
    return int(bool(record["differ"] or record["only_a"] or record["only_b"]))
  import jax
  if len(jax.devices()) != args.devices:
    raise SystemExit(f"asked for {args.devices} devices, jax sees {len(jax.devices())}")
  emit_json(dump(args.out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
