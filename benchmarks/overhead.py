"""Overhead of the NRES workers over a plain vmapped scan of the same system at fixed theta.

For each system: the time of one ``NRES.estimate`` call (one window of W steps over N particles:
noise, pairing, resets, credit) against a jit-compiled plain rollout of the same N particles for
W steps at fixed theta (``vmap`` over particles of ``scan`` over steps, per-step keys derived the
same way). Medians of interleaved repetitions in one process; the ratio is the figure.

    python -m benchmarks.overhead [--reps 30]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import tasks
from benchmarks.common import emit_json, mlp_lr_system, print_table, time_interleaved
from meta_train.estimators import NRES

TARGET = 1.3


def plain_rollout(system, num_particles: int, num_steps: int):
  """``f(theta, states, key)``: N particles, W steps, fixed theta (the baseline)."""
  def f(theta, states, key):
    particle_keys = jax.random.split(key, num_particles)

    def one(state, pkey):
      def body(s, j):
        return system.step(theta, s, jax.random.fold_in(pkey, j))
      return jax.lax.scan(body, state, jnp.arange(num_steps))
    return jax.vmap(one)(states, particle_keys)
  return jax.jit(f)


def measure(system, num_particles: int, unroll_length: int, reps: int) -> dict:
  est = NRES(system, num_particles=num_particles, sigma=0.01, unroll_length=unroll_length)
  theta = system.theta0
  ws = est.init(jax.random.key(0), theta)
  states = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), ws.states)  # [N, ...]
  plain = plain_rollout(system, num_particles, unroll_length)
  key = jax.random.key(1)
  t = time_interleaved({"plain": lambda: plain(theta, states, key),
                        "nres": lambda: est.estimate(key, theta, ws)}, reps=reps)
  steps = num_particles * unroll_length
  return {"system": system.name, "N": num_particles, "W": unroll_length,
          "plain_ms": t["plain"] * 1e3, "nres_ms": t["nres"] * 1e3,
          "ratio": t["nres"] / t["plain"], "nres_traj_steps_per_s": steps / t["nres"]}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--reps", type=int, default=30)
  args = parser.parse_args(argv)
  configs = [
      (mlp_lr_system(), 32, 20),
      (mlp_lr_system(), 128, 20),
      (tasks.get("lorenz"), 400, 100),
      (tasks.get("lorenz"), 4000, 100),
      (tasks.get("toy2d"), 100, 10),
  ]
  rows = [measure(s, n, w, args.reps) for s, n, w in configs]
  for r in rows:
    r["within_target"] = r["ratio"] <= TARGET
  print(f"NRES window vs plain vmapped scan at fixed theta (target: ratio <= {TARGET})")
  print_table(rows, ["system", "N", "W", "plain_ms", "nres_ms", "ratio", "within_target"])
  emit_json({"benchmark": "overhead", "target_ratio": TARGET, "device": str(jax.devices()[0]),
             "results": rows})


if __name__ == "__main__":
  main()
