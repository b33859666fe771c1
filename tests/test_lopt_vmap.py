"""Every learned optimizer under ``jax.vmap``, on every path of its per-parameter MLP.

A vmapped update must equal a Python loop of single updates, whatever mix of its arguments is
batched (parameters, gradients, the loss, the optimizer state, theta), and the fused kernel, the
plain CPU path and the accelerator path must agree with each other to float32 rounding. The
accelerator path (``jax.vmap`` of the plain MLP rather than a loop of it) is the one GPU and TPU
users run; it executes here under :func:`lopt_meta.kernels.simulate_accelerator`.

The quick tier (``-m "not slow"``) runs the default learned optimizer (``mlp``) with every mix on
every path, and every other learned optimizer with its own models under one shared gradient (the
``params`` mix) on the plain and accelerator paths (whose batching rule had the bug; the kernel's
``per_parameter_mlp`` under vmap is checked by tests/test_kernels.py); the ``slow`` cases add the
other optimizers' other mixes, their kernel path and their optax transformations under vmap.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lopt_meta
from lopt_meta.base import LearnedOptimizer
from tests.paths import PATHS, kernel_path  # noqa: F401  (the fixture)

B = 3
LEARNED = sorted(n for n, c in lopt_meta.OPTIMIZERS.items()
                 if n not in ("adam", "sgdm", "hyper_adam", "lr_schedule"))
# Which of (theta, grads, state, params, loss) carry the batch axis.
MIXES = {
    "params": (False, False, True, True, False),       # shared gradient, own models (the bug)
    "grads": (False, True, False, False, False),       # one model, several gradients
    "theta": (True, False, False, False, False),       # particles: own weights, one model
    "theta_loss": (True, False, False, False, True),
    "everything": (True, True, True, True, True),
}


def _params(key):
  k1, k2, k3 = jax.random.split(key, 3)
  return {"dense": {"kernel": jax.random.normal(k1, (20, 7)), "bias": jax.random.normal(k2, (7,))},
          "conv": jax.random.normal(k3, (3, 3, 2, 4))}


def _perturbed_theta(lopt: LearnedOptimizer, key):
  """theta with every leaf moved off its initialization (a zero last layer would hide the MLP)."""
  theta = lopt.init_theta(jax.random.key(0))
  leaves, treedef = jax.tree.flatten(theta)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [x + 0.3 * jax.random.normal(k, x.shape)
                                      for x, k in zip(leaves, keys)])


def _inputs(lopt: LearnedOptimizer, mix):
  """``(args, in_axes)`` for ``update(theta, grads, state, params, loss)``: batched entries have
  ``B`` members, shared ones one; the state comes from a few updates, so that its accumulators
  and step count are not zero."""
  keys = jax.random.split(jax.random.key(7), 5)

  def one(i):
    params = _params(jax.random.fold_in(keys[0], i))
    grads = jax.tree.map(lambda p: jnp.sin(3.0 * p + i), _params(jax.random.fold_in(keys[1], i)))
    theta = _perturbed_theta(lopt, jax.random.fold_in(keys[2], i))
    state = lopt.init(params)
    for k in range(i + 2):  # members differ in their step count too
      _, state = lopt.update(theta, jax.tree.map(lambda g: g * (k + 1), grads), state, params,
                             loss=jnp.float32(1.0 + k))
    return theta, grads, state, params, jnp.float32(0.5 + i)

  members = [one(i) for i in range(B)]
  args, in_axes = [], []
  for position, batched in enumerate(mix):
    if batched:
      args.append(jax.tree.map(lambda *x: jnp.stack(x), *[m[position] for m in members]))
    else:
      args.append(members[0][position])
    in_axes.append(0 if batched else None)
  return args, tuple(in_axes)


def _member(args, in_axes, b):
  return [jax.tree.map(lambda x: x[b], a) if axis == 0 else a for a, axis in zip(args, in_axes)]


def _close(got, want):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    w = np.asarray(w)
    assert np.shape(g) == w.shape
    if w.size == 0:
      continue
    scale = max(float(np.max(np.abs(w))), 1e-30)
    np.testing.assert_allclose(np.asarray(g), w, rtol=2e-5, atol=2e-5 * scale)


_RESULTS: dict[tuple[str, str], dict[str, object]] = {}
QUICK_LOPT, QUICK_MIX = "mlp", "params"  # the default optimizer; the reported bug's mix


def _quick(name, mix, path):
  """Every case of ``QUICK_LOPT``; ``QUICK_MIX`` of the others off the kernel path."""
  return name == QUICK_LOPT or (mix == QUICK_MIX and path != "kernel")


def _cases():
  """Every learned optimizer, mix and path as ``(name, mix, kernel_path)``, with the fixture's ids
  (``path-name-mix``); ``slow`` unless :func:`_quick`."""
  return [pytest.param(name, mix, path, id=f"{path}-{name}-{mix}",
                       marks=() if _quick(name, mix, path) else pytest.mark.slow)
          for path in PATHS for name in LEARNED for mix in sorted(MIXES)]


@pytest.mark.parametrize("name, mix, kernel_path", _cases(), indirect=["kernel_path"])
def test_vmapped_update_equals_a_loop_of_single_updates(name, mix, kernel_path):
  lopt = lopt_meta.get_optimizer(name)
  args, in_axes = _inputs(lopt, MIXES[mix])

  def update(theta, grads, state, params, loss):
    return lopt.update(theta, grads, state, params, loss=loss)

  got = jax.jit(jax.vmap(update, in_axes=in_axes))(*args)
  single = jax.jit(update)
  want = jax.tree.map(lambda *x: jnp.stack(x),
                      *[single(*_member(args, in_axes, b)) for b in range(B)])
  assert jax.tree.structure(got) == jax.tree.structure(want)
  _close(got, want)
  _RESULTS.setdefault((name, mix), {})[kernel_path] = got
  others = [p for p in _RESULTS[(name, mix)] if p != kernel_path]
  for other in others:  # the paths agree with each other (whichever ran first)
    _close(got, _RESULTS[(name, mix)][other])


@pytest.mark.parametrize("name", [n if n == QUICK_LOPT else pytest.param(n, marks=pytest.mark.slow)
                                  for n in LEARNED])
def test_optax_transformation_under_vmap_with_a_shared_gradient(name, kernel_path):
  """The report's case: ``tx.init`` and ``tx.update`` vmapped over 3 models whose gradient is
  one shared (unbatched) tree."""
  lopt = lopt_meta.get_optimizer(name)
  tx = lopt.as_optax(_perturbed_theta(lopt, jax.random.key(1)))
  params = jax.vmap(_params)(jax.random.split(jax.random.key(2), B))
  grads = jax.tree.map(jnp.cos, _params(jax.random.key(3)))

  def step(p, g):
    return tx.update(g, tx.init(p), p)[0]

  got = jax.jit(jax.vmap(step, in_axes=(0, None)))(params, grads)
  want = [jax.jit(step)(jax.tree.map(lambda x: x[b], params), grads) for b in range(B)]
  _close(got, jax.tree.map(lambda *x: jnp.stack(x), *want))
