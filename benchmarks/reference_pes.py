"""The reference framework's speed: learned_optimization's PES on the throughput configs.

Side-by-side figure for ``python -m benchmarks.throughput --config fmnist28 --estimator pes``
(run that one with ``LOPT_META_KERNELS=0`` for the plain-XLA path). This script does not import
lopt-meta: it runs in its own virtual environment with Google's ``learned_optimization``, the
only release on PyPI (0.0.1, March 2022).

Install (python 3.11). The PyPI release pins 2021 versions that no longer install; it runs with
``--no-deps`` on either of these, with tensorflow-cpu because ``learned_optimization.summary`` and
``learned_optimization.tasks.datasets.base`` import tensorflow and tensorflow_datasets at import
time (no data is read through them). These exact commands worked.

The same jax as lopt-meta (0.10.2; the fair side-by-side: same XLA)::

    python3.11 -m venv /tmp/lo-venv-j10
    /tmp/lo-venv-j10/bin/pip install "jax==0.10.2" "jaxlib==0.10.2" "flax==0.12.8" \
        "dm-haiku==0.0.17" "optax==0.2.8" gin-config absl-py tqdm "tensorflow-cpu==2.21.0" \
        "tensorflow-datasets==4.9.10" "tensorboard==2.21.0"
    /tmp/lo-venv-j10/bin/pip install --no-deps "learned_optimization==0.0.1"

An older jax, closer to the library's own era::

    python3.11 -m venv /tmp/lo-venv
    /tmp/lo-venv/bin/pip install "jax==0.4.13" "jaxlib==0.4.13" "numpy==1.24.3" "flax==0.7.0" \
        "dm-haiku==0.0.10" "optax==0.1.7" "chex==0.1.7" gin-config absl-py tqdm \
        "tensorflow-cpu==2.13.1" "tensorflow-datasets==4.9.2"
    /tmp/lo-venv/bin/pip install "tensorflow-metadata==1.14.0" "scipy==1.11.4"
    /tmp/lo-venv/bin/pip install --no-deps "learned_optimization==0.0.1"

The few jax names the release uses and later jax removed (``jax.tree_multimap`` and friends,
``jax.ShapedArray``, ``jax.lib.xla_client``) are aliased below before it is imported.

Run (from the repository root; hold the timing lock so that no two timings overlap)::

    flock /tmp/timing.lock /tmp/lo-venv-j10/bin/python benchmarks/reference_pes.py --config fmnist28
    flock /tmp/timing.lock /tmp/lo-venv-j10/bin/python benchmarks/reference_pes.py --config fmnist8

What runs: ``learned_optimization.outer_trainers.truncated_pes.TruncatedPES`` with
``ConstantTruncationSchedule(T)``, ``learned_optimizers.mlp_lopt.MLPLOpt()`` (19 -> 32 -> 32 -> 2,
exp_mult = step_mult = 0.001) and the library's own image MLP task
(``tasks.fixed.image_mlp._MLPImageTask``, softmax cross-entropy, the 1.5 ln(10) normalizer) on
FashionMNIST read from the IDX files in /usr/share/datasets/fashion-mnist (train = the first 80%
of the train file, as lopt-meta cuts it; images float32 in [0, 1]; 8x8 by jax's antialiased
bilinear resize, as lopt-meta's loader). Its data sets are in-memory numpy iterators drawing
random batches of 128 (the library's ``Datasets`` interface; its tf.data loaders are bypassed).

The PyPI release predates ``truncated_step.VectorizedLOptTruncatedStep``: there ``TruncatedPES``
takes the task family, learned optimizer and truncation schedule itself, and its unroll is
``outer_trainers.common.truncated_unroll`` (a jitted ``lax.scan`` over ``W`` steps of a vmapped
inner step), the code that later moved into ``VectorizedLOptTruncatedStep``. ``num_tasks`` counts
antithetic pairs: PES unrolls ``num_tasks`` positive and ``num_tasks`` negative particles, so 8
tasks are lopt-meta's 16 particles. ``trunc_length = steps_per_jit = W`` (one jitted unroll per
window); ``random_initial_iteration_offset = T`` staggers the episodes (lopt-meta's unlocked
workers); the meta-loss is the normalized training loss of each step's batch, sigma 0.01.
``--stack-antithetic`` (default on) runs the positive and negative particles as one vmapped batch
of ``2 num_tasks``; ``--no-stack-antithetic`` is the library's default (two unrolls in a row).

One outer step is ``TruncatedPES.compute_gradient_estimate``: sample the perturbations, fetch
``W x num_tasks`` batches on the host (``training.get_batches``), run the jitted unroll(s), and
``compute_pes_grad``. Timed: the median over ``--steps`` outer steps after ``--warmup``; a
trajectory-step is one inner training step of one particle (``2 num_tasks W`` per outer step).
``compile_s`` is the first outer step's time; ``traj_steps_per_s_best`` uses the fastest step.
The host batching time alone is also reported (its median over the same number of calls), and
the rate without it. The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import struct
import time
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np

def _import_library() -> None:
  """Imports learned_optimization (at run time: importing this module needs only jax), after
  aliasing the jax names its 0.0.1 release uses and later jax releases removed."""
  global training, mlp_lopt, gradient_learner, truncated_pes, truncation_schedule
  global tasks_base, datasets_base, image_mlp
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  warnings.filterwarnings("ignore", category=FutureWarning)  # its jax.tree_* calls
  warnings.filterwarnings("ignore", category=DeprecationWarning)
  for name, alias in (("tree_multimap", jax.tree_util.tree_map),
                      ("tree_map", jax.tree_util.tree_map),
                      ("tree_leaves", jax.tree_util.tree_leaves),
                      ("tree_flatten", jax.tree_util.tree_flatten),
                      ("tree_unflatten", jax.tree_util.tree_unflatten)):
    if not hasattr(jax, name):
      setattr(jax, name, alias)
  if not hasattr(jax, "ShapedArray"):  # only describes the data's shape in TruncatedPES.__init__
    jax.ShapedArray = jax.ShapeDtypeStruct
  if not hasattr(jax.lib, "xla_client"):  # only a type annotation in gradient_learner
    jax.lib.xla_client = types.SimpleNamespace(Device=object)
  from learned_optimization import training
  from learned_optimization.learned_optimizers import mlp_lopt
  from learned_optimization.outer_trainers import gradient_learner
  from learned_optimization.outer_trainers import truncated_pes
  from learned_optimization.outer_trainers import truncation_schedule
  from learned_optimization.tasks import base as tasks_base
  from learned_optimization.tasks.datasets import base as datasets_base
  from learned_optimization.tasks.fixed import image_mlp


FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
# config: (image size, hidden sizes, particles (= 2 num_tasks), W, horizon T)
CONFIGS = {
    "fmnist28": (28, (32,), 16, 20, 1000),
    "fmnist8": (8, (32,), 32, 50, 1000),
}


def read_idx(path: str) -> np.ndarray:
  with gzip.open(path, "rb") as f:
    data = f.read()
  ndim = data[3]
  shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(image_size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Splits as lopt-meta cuts them: train file -> train 80% / inner_valid / outer_valid 10% each;
  test file -> test. Images ``float32 [n, s, s, 1]`` in [0, 1], labels int32."""
  images = read_idx(f"{FASHION_MNIST}/train-images-idx3-ubyte.gz")[..., None]
  labels = read_idx(f"{FASHION_MNIST}/train-labels-idx1-ubyte.gz").astype(np.int32)
  test = (read_idx(f"{FASHION_MNIST}/t10k-images-idx3-ubyte.gz")[..., None],
          read_idx(f"{FASHION_MNIST}/t10k-labels-idx1-ubyte.gz").astype(np.int32))
  n = len(labels)
  a, b = int(round(0.8 * n)), int(round(0.9 * n))
  parts = {"train": (images[:a], labels[:a]), "inner_valid": (images[a:b], labels[a:b]),
           "outer_valid": (images[b:], labels[b:]), "test": test}
  out = {}
  for split, (x, y) in parts.items():
    if image_size != x.shape[1]:  # lopt-meta's resize: bilinear, antialiased, rounded to uint8
      r = jax.image.resize(jnp.asarray(x, jnp.float32), (x.shape[0], image_size, image_size, 1),
                           method="linear", antialias=True)
      x = np.asarray(jnp.clip(jnp.rint(r), 0, 255)).astype(np.uint8)
    out[split] = (x.astype(np.float32) / 255.0, y)
  return out


def batch_iterator(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int):
  rng = np.random.default_rng(seed)
  while True:
    idx = rng.integers(0, len(labels), batch_size)
    yield {"image": images[idx], "label": labels[idx]}


def make_datasets(image_size: int, batch_size: int = 128):
  """learned_optimization ``Datasets`` of in-memory batch iterators over the four splits."""
  splits = load_fashion_mnist(image_size)
  its = {name: batch_iterator(x, y, batch_size, seed)
         for seed, (name, (x, y)) in enumerate(splits.items())}
  abstract = {"image": jax.ShapeDtypeStruct((batch_size, image_size, image_size, 1), jnp.float32),
              "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
  return datasets_base.Datasets(**its, extra_info={"num_classes": 10}, abstract_batch=abstract)


def _print_summary(r: dict, hidden) -> None:
  """The human-readable table of one run's ``record`` (the JSON line follows it)."""
  size, tasks = r["image_size"], r["num_tasks"]
  print(f"learned_optimization TruncatedPES + MLPLOpt on FashionMNIST {size}x{size} "
        f"MLP {size * size}->{'->'.join(map(str, hidden))}->10")
  print(f"  particles      {2 * tasks:10d}  ({tasks} num_tasks x 2 antithetic; stacked: "
        f"{r['stack_antithetic_samples']})")
  print(f"  W / T          {r['unroll_length']:10d}  / {r['horizon']}")
  print(f"  throughput     {r['traj_steps_per_s']:10.0f} trajectory-steps/s  "
        f"({r['outer_step_s'] * 1e3:.1f} ms per outer step, median of {r['timed_steps']}; "
        f"best {r['traj_steps_per_s_best']:.0f})")
  print(f"  host batching  {r['host_batching_s'] * 1e3:10.1f} ms per outer step  ->  "
        f"{r['traj_steps_per_s_without_host_batching']:.0f} trajectory-steps/s without it")
  print(f"  compile        {r['compile_s']:10.1f} s (first outer step)")
  print(f"  theta          {r['theta_size']:10d} meta-parameters; mean loss {r['mean_loss']:.4f}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", choices=sorted(CONFIGS), default="fmnist28")
  parser.add_argument("--num-particles", type=int, default=None,
                      help="particles (2 x learned_optimization's num_tasks)")
  parser.add_argument("--warmup", type=int, default=3, help="outer steps after the first")
  parser.add_argument("--steps", type=int, default=10, help="timed outer steps")
  parser.add_argument("--stack-antithetic", action=argparse.BooleanOptionalAction, default=True)
  args = parser.parse_args(argv)
  _import_library()
  image_size, hidden, N, W, T = CONFIGS[args.config]
  N = args.num_particles or N
  if N % 2:
    parser.error("--num-particles must be even (antithetic pairs)")
  num_tasks = N // 2

  task = image_mlp._MLPImageTask(make_datasets(image_size), list(hidden))
  family = tasks_base.single_task_to_family(task)
  lopt = mlp_lopt.MLPLOpt()
  est = truncated_pes.TruncatedPES(
      task_family=family, learned_opt=lopt,
      trunc_sched=truncation_schedule.ConstantTruncationSchedule(T), num_tasks=num_tasks,
      trunc_length=W, steps_per_jit=W, std=0.01, random_initial_iteration_offset=T,
      stack_antithetic_samples=args.stack_antithetic)

  theta = lopt.init(jax.random.PRNGKey(0))
  num_theta = sum(x.size for x in jax.tree_util.tree_leaves(theta))
  outer_state = gradient_learner.OuterState(outer_iteration=jnp.asarray(0, jnp.int32))
  weights = gradient_learner.WorkerWeights(theta=theta, theta_model_state=None,
                                           outer_state=outer_state)
  state = est.init_worker_state(weights, jax.random.PRNGKey(1))
  jax.block_until_ready(state)

  def outer_step(i, state):
    out, _ = est.compute_gradient_estimate(weights, jax.random.PRNGKey(100 + i), state,
                                           with_summary=False)
    jax.block_until_ready((out.grad, out.unroll_state))
    return out

  start = time.perf_counter()
  out = outer_step(0, state)
  compile_s = time.perf_counter() - start
  for i in range(args.warmup):
    out = outer_step(1 + i, out.unroll_state)
  times, losses = [], []
  for i in range(args.steps):
    start = time.perf_counter()
    out = outer_step(1 + args.warmup + i, out.unroll_state)
    times.append(time.perf_counter() - start)
    losses.append(float(out.mean_loss))
  step_s = float(np.median(times))

  batch_times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    jax.block_until_ready(training.get_batches(family, (W, num_tasks), False, numpy=False))
    batch_times.append(time.perf_counter() - start)
  batch_s = float(np.median(batch_times))

  traj = 2 * num_tasks * W
  rate = traj / step_s
  grad_norm = float(jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree_util.tree_leaves(out.grad))))
  record = {
      "reference": "learned_optimization", "estimator": "pes", "config": args.config,
      "traj_steps_per_s": rate, "compile_s": compile_s,
      "traj_steps_per_s_without_host_batching": traj / max(step_s - batch_s, 1e-9),
      "outer_step_s": step_s, "traj_steps_per_s_best": traj / min(times),
      "host_batching_s": batch_s, "num_particles": 2 * num_tasks,
      "num_tasks": num_tasks, "unroll_length": W, "horizon": T, "image_size": image_size,
      "stack_antithetic_samples": args.stack_antithetic, "theta_size": num_theta,
      "timed_steps": args.steps, "mean_loss": float(np.mean(losses)), "grad_norm": grad_norm,
      "jax": jax.__version__, "python": platform.python_version(),
      "device": str(jax.devices()[0]),
  }
  _print_summary(record, hidden)
  print(json.dumps(record))


if __name__ == "__main__":
  main()
