"""The plain-XLA MLPLOpt update (``LOPT_META_KERNELS=0``) over particles with their own theta.

    LOPT_META_KERNELS=0 python -m benchmarks.plain_mlp [--particles 16] [--reps 20]

Times, interleaved in one process, one jitted ``vmap`` over ``P`` particles of MLPLOpt's update
(momenta, per-tensor normalization, the 8 -> 32 -> 32 -> 2 MLP) on fmnist28's parameters (784 x 32,
32, 32 x 10, 10: 25,450 rows), each particle with its own theta, two ways:

* ``looped``: :func:`lopt_meta.kernels.mlp_lopt_update` with the kernel off: on CPU its batching
  rule runs the particles as a loop of unbatched calls;
* ``vmapped``: ``jax.vmap`` of :func:`lopt_meta.kernels.mlp_lopt_update_reference`, the same
  arithmetic batched the way ``vmap`` batches it: every matmul becomes a batched matmul.

The last stdout line is JSON with each median in milliseconds and their ratio.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import emit_json, print_table, time_interleaved
from lopt_meta import features, kernels
from lopt_meta.mlp_lopt import MLPLOpt

SIZES = (784 * 32, 32, 32 * 10, 10)  # fmnist28's MLP 784 -> 32 -> 10


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--particles", type=int, default=16)
  parser.add_argument("--reps", type=int, default=20)
  args = parser.parse_args(argv)
  if kernels.available():
    raise SystemExit("run with LOPT_META_KERNELS=0: this measures the plain-XLA path")
  P = args.particles
  offsets = tuple(int(o) for o in np.cumsum((0,) + SIZES))
  lopt = MLPLOpt()
  key = jax.random.key(0)
  theta = lopt.init_theta(key)
  thetas = jax.tree.map(lambda x: x + 0.01 * jax.random.normal(key, (P,) + x.shape), theta)
  ks = jax.random.split(key, 3)
  g = jax.random.normal(ks[0], (P, offsets[-1]))
  p = jax.random.normal(ks[1], (P, offsets[-1]))
  m = 0.1 * jax.random.normal(ks[2], (P, len(lopt.momentum_decays), offsets[-1]))
  decays = jnp.asarray(lopt.momentum_decays)
  time_features = features.tanh_embedding(jnp.int32(5))
  F = lopt.num_features

  def update(fn):
    def one(th, g, p, m):
      c = time_features @ th["w0"][F:] + th["b0"]
      return fn(g, p, m, decays, c, th["w0"][:F], th["w1"], th["b1"], th["w2"], th["b2"],
                offsets=offsets, exp_mult=lopt.exp_mult, step_mult=lopt.step_mult)
    return jax.jit(jax.vmap(one))

  looped, vmapped = update(kernels.mlp_lopt_update), update(kernels.mlp_lopt_update_reference)
  a, b = looped(thetas, g, p, m)[0], vmapped(thetas, g, p, m)[0]
  rel_err = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
  times = time_interleaved({"looped": lambda: looped(thetas, g, p, m),
                            "vmapped": lambda: vmapped(thetas, g, p, m)}, reps=args.reps)
  rows = [{"form": k, "particles": P, "rows": offsets[-1], "ms": 1000 * v} for k, v in times.items()]
  print_table(rows, ["form", "particles", "rows", "ms"])
  ratio = times["vmapped"] / times["looped"]
  print(f"looped is {ratio:.2f}x faster; max relative difference {rel_err:.1e}")
  emit_json({"benchmark": "plain_mlp", "particles": P, "rows": offsets[-1],
             "looped_ms": 1000 * times["looped"], "vmapped_ms": 1000 * times["vmapped"],
             "speedup": ratio, "max_rel_diff": rel_err, "device": str(jax.devices()[0])})


if __name__ == "__main__":
  main()
