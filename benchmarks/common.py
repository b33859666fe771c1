"""Shared helpers for the benchmarks: timing, tables, the final JSON line, a workload system."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import tasks


def time_interleaved(fns: dict[str, Callable[[], object]], reps: int = 20) -> dict[str, float]:
  """Median wall time (s) of each zero-argument function, after a warm-up call, measured in
  interleaved rounds (A, B, A, B, ...) so that machine noise hits all of them alike."""
  for fn in fns.values():
    jax.block_until_ready(fn())
  times = {name: [] for name in fns}
  for _ in range(reps):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - t0)
  return {name: float(np.median(ts)) for name, ts in times.items()}


def print_table(rows: Sequence[dict], columns: Sequence[str]) -> None:
  widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
  print("  ".join(c.ljust(widths[c]) for c in columns))
  print("  ".join("-" * widths[c] for c in columns))
  for r in rows:
    print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(v) -> str:
  if v is None:
    return ""
  if isinstance(v, float):
    return f"{v:.4g}"
  if isinstance(v, bool):
    return "PASS" if v else "FAIL"
  return str(v)


def emit_json(record: dict) -> None:
  """The final stdout line: one JSON object."""
  print(json.dumps(record, default=lambda x: np.asarray(x).tolist()), flush=True)


def mlp_lr_system(*, horizon: int = 200, width: int = 64, batch: int = 64,
                  in_dim: int = 16) -> tasks.UnrolledSystem:
  """A workload with real per-step compute: SGD on a 2-layer MLP regression, per-layer learning
  rates ``exp(theta)``; each step draws its batch from the step key. Loss: the batch MSE.
  Per step about ``6 * batch * (in_dim*width + width*width + width)`` FLOPs (forward+backward)."""
  w_true = jax.random.normal(jax.random.key(123), (in_dim,)) / jnp.sqrt(in_dim)

  def init(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"w1": jax.random.normal(k1, (in_dim, width)) / jnp.sqrt(in_dim),
            "w2": jax.random.normal(k2, (width, width)) / jnp.sqrt(width),
            "w3": jax.random.normal(k3, (width,)) / jnp.sqrt(width)}

  def loss_fn(params, x, y):
    h = jax.nn.relu(x @ params["w1"])
    h = jax.nn.relu(h @ params["w2"])
    return jnp.mean((h @ params["w3"] - y) ** 2)

  def step(theta, params, key):
    x = jax.random.normal(key, (batch, in_dim))
    y = jnp.sin(x @ w_true)
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    lrs = jnp.exp(theta)
    new = {name: params[name] - lrs[i] * grads[name] for i, name in enumerate(("w1", "w2", "w3"))}
    return new, loss

  return tasks.UnrolledSystem(init=init, step=step, horizon=horizon,
                              theta0=jnp.log(jnp.full((3,), 0.05, jnp.float32)), name="mlp_lr")


def saved_run(path: str, config: dict, run: Callable[[], dict]) -> dict:
  """``run()``'s result, kept at ``path`` as ``{"config", "result"}`` (written atomically): a
  later call with the same ``config`` loads it instead of running again, so an interrupted sweep
  resumes at the run it was in; a file of another configuration stops the sweep (SystemExit,
  before any compute) and is left as it is."""
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved["config"] == config:
      return saved["result"]
    raise SystemExit(f"{path} holds a run of another configuration ({saved['config']}); "
                     f"pass another --out")
  result = run()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump({"config": config, "result": result}, f)
  os.replace(path + ".tmp", path)
  return result
