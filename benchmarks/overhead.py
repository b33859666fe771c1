"""Overhead of the NRES workers over a plain vmapped scan of the same system at fixed theta.

For each system: one ``NRES.estimate`` window (W steps over N particles: noise, pairing, episode
resets, credit, masking, metrics) against a plain rollout of the same N particles for the same W
steps at fixed theta (``vmap`` over particles of ``scan`` over steps, per-step keys derived the
same way, with the same fused threefry of :mod:`meta_train.engine.keys`, losses returned). Both are
timed two ways, medians of interleaved repetitions in one process:

* ``in_loop`` (the figure the target applies to): ``K`` consecutive windows inside one compiled
  ``lax.scan``, per window. This is how the trainer runs estimates (compiled chunks of outer
  steps), so it is the cost of a window.
* ``per_call``: one jitted call from Python. On CPU this adds the dispatch of the call and one
  host buffer per output (several microseconds each: ``estimate`` returns 14, the plain rollout
  3), which dominates windows of tens of microseconds.

A third figure, ``floor`` (fast-form rows), is a reference for what any NRES window must add to
a plain rollout: a hand-written window with nothing but the essentials (pair keys, one noise
draw and episode reset per pair at the window's start, the perturbed theta per particle, the
rollout, ``dl`` summed in the scan's carry, one estimate; no masking, no events inside the
window, no metrics). Where ``floor`` itself is near the target, the target is set by the
platform's fixed cost per kernel rather than by the workers.

``extra_us`` is what a window adds to the plain rollout: on a small system, a fixed cost per
window (the window's own kernels: keys, noise, resets, sums, metrics), whatever ``W`` is; the
toy2d rows with ``W`` = 10, 20, 50 show it.

Rows with ``W`` dividing ``T`` run the fast window form (step-unlocked on the window grid: every
event falls on a window's first step); the ``W`` not dividing ``T`` rows keep pairs straddling
episode boundaries and run the general form (per-step selects), which is reported, not hidden.

    python -m benchmarks.overhead [--reps 20] [--windows 50]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import tasks
from benchmarks.common import emit_json, mlp_lr_system, print_table, time_interleaved
from meta_train.engine import keys as keys_lib
from meta_train.estimators import NRES

TARGET = 1.3


def plain_window(system, num_particles: int, num_steps: int):
  """``f(theta, states, key) -> (states, losses [N, W])``: N particles, W steps, fixed theta."""
  def f(theta, states, key):
    particle_keys = keys_lib.split(key, num_particles)

    def one(state, pkey):
      def body(s, j):
        return system.step(theta, s, keys_lib.fold_in(pkey, j))
      return jax.lax.scan(body, state, jnp.arange(num_steps))
    return jax.vmap(one)(states, particle_keys)
  return f


def floor_window(system, num_particles: int, num_steps: int, theta, sigma: float):
  """``f((states, t, eps), key) -> ((states, t, eps), grad)``: the essentials of one NRES window
  (see the module docstring) for ``P = N/2`` pairs whose events all fall on the window's first
  step; ``states`` flat ``[N, ...]`` (pair ``i``'s branches at rows ``2i``, ``2i + 1``)."""
  num_pairs, horizon = num_particles // 2, system.horizon
  signs = jnp.asarray([1.0, -1.0])

  def per_particle(x):  # [P, ...] -> [N, ...]
    return jnp.repeat(x, 2, axis=0)

  def f(carry, key):
    states, t, eps = carry
    pair_keys = keys_lib.split(key, num_pairs)
    began = t == 0
    new_eps = sigma * keys_lib.normal(keys_lib.fold_in(pair_keys, 1), eps.shape[1])
    eps = jnp.where(began[:, None], new_eps, eps)
    fresh = jax.vmap(system.init)(keys_lib.fold_in(pair_keys, 0))
    states = jax.tree.map(
        lambda a, b: jnp.where(per_particle(began).reshape((-1,) + (1,) * (b.ndim - 1)),
                               per_particle(a), b), fresh, states)
    th = (theta + signs[None, :, None] * eps[:, None, :]).reshape(num_particles, -1)

    def body(c, j):
      s, dl = c
      s, loss = jax.vmap(system.step)(th, s, per_particle(keys_lib.fold_in(pair_keys, 3 * j + 2)))
      loss = loss.reshape(num_pairs, 2)
      return (s, dl + (loss[:, 0] - loss[:, 1])), None
    (states, dl), _ = jax.lax.scan(body, (states, jnp.zeros((num_pairs,))), jnp.arange(num_steps))
    grad = (dl @ eps) / (2 * sigma**2 * num_pairs * num_steps)
    return (states, (t + num_steps) % horizon, eps), grad
  return f


def in_loop(window, num_windows: int):
  """``g(carry, key)``: ``num_windows`` calls of ``window(carry, key_k) -> (carry, out)`` in one
  compiled ``lax.scan`` (the outputs are stacked, as the trainer stacks its metrics)."""
  def g(carry, key):
    return jax.lax.scan(window, carry, jax.random.split(key, num_windows))
  return jax.jit(g)


def measure(system, num_particles: int, unroll_length: int, reps: int, num_windows: int) -> dict:
  est = NRES(system, num_particles=num_particles, sigma=0.01, unroll_length=unroll_length)
  theta = system.theta0
  ws = est.init(jax.random.key(0), theta)
  states = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), ws.states)  # [N, ...]
  plain = plain_window(system, num_particles, unroll_length)
  plain_call = jax.jit(plain)
  def nres_window(workers, k):
    grad, workers, metrics = est.estimate_fn(k, theta, workers, None)
    return workers, (grad, metrics)
  nres_loop = in_loop(nres_window, num_windows)
  plain_loop = in_loop(lambda s, k: plain(theta, s, k), num_windows)
  key = jax.random.key(1)
  form = "fast" if system.horizon % unroll_length == 0 else "general"
  fns = {
      "plain_call": lambda: plain_call(theta, states, key),
      "nres_call": lambda: est.estimate(key, theta, ws),
      "plain_loop": lambda: plain_loop(states, key),
      "nres_loop": lambda: nres_loop(ws, key),
  }
  if form == "fast" and jnp.ndim(theta) == 1:
    floor_loop = in_loop(floor_window(system, num_particles, unroll_length, theta, est.sigma),
                         num_windows)
    fns["floor_loop"] = lambda: floor_loop((states, ws.t, ws.eps), key)
  t = time_interleaved(fns, reps=reps)
  return {"system": system.name, "N": num_particles, "W": unroll_length, "T": system.horizon,
          "form": form,
          "plain_us": t["plain_loop"] / num_windows * 1e6,
          "nres_us": t["nres_loop"] / num_windows * 1e6,
          "extra_us": (t["nres_loop"] - t["plain_loop"]) / num_windows * 1e6,
          "ratio": t["nres_loop"] / t["plain_loop"],
          "floor": t["floor_loop"] / t["plain_loop"] if "floor_loop" in t else None,
          "plain_call_us": t["plain_call"] * 1e6, "nres_call_us": t["nres_call"] * 1e6,
          "ratio_per_call": t["nres_call"] / t["plain_call"],
          "nres_traj_steps_per_s": num_particles * unroll_length * num_windows / t["nres_loop"]}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--reps", type=int, default=20)
  parser.add_argument("--windows", type=int, default=50, help="windows per compiled loop")
  args = parser.parse_args(argv)
  configs = [
      (mlp_lr_system(), 32, 20),
      (mlp_lr_system(), 128, 20),
      (tasks.get("lorenz"), 400, 100),
      (tasks.get("lorenz"), 4000, 100),
      (tasks.get("toy2d"), 100, 10),
      (tasks.get("toy2d"), 100, 20),      # the same pairs, longer windows: the extra cost is
      (tasks.get("toy2d"), 100, 50),      # per window (extra_us stays flat), the ratio falls
      (mlp_lr_system(), 32, 30),          # W does not divide T = 200: the general form
      (tasks.get("lorenz"), 400, 96),     # W does not divide T = 2000: the general form
  ]
  rows = [measure(s, n, w, args.reps, args.windows) for s, n, w in configs]
  for r in rows:
    r["within_target"] = r["ratio"] <= TARGET
  print(f"NRES window vs plain vmapped scan at fixed theta, in a compiled loop of {args.windows} "
        f"windows (target: ratio <= {TARGET}); per-call figures include Python dispatch")
  print_table(rows, ["system", "N", "W", "T", "form", "plain_us", "nres_us", "extra_us", "ratio",
                     "within_target", "floor", "plain_call_us", "nres_call_us", "ratio_per_call"])
  emit_json({"benchmark": "overhead", "target_ratio": TARGET, "windows_per_loop": args.windows,
             "device": str(jax.devices()[0]), "results": rows})


if __name__ == "__main__":
  main()
