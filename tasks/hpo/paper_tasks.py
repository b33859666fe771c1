"""The ES-Single paper's hyperparameter-optimization tasks (section 4.2, appendix C).

The paper trains on MNIST for the schedule and on FashionMNIST for the others; only FashionMNIST
(and scikit-learn's digits) exist offline here, so every task reads FashionMNIST by default
(``dataset="digits"`` for a small offline stand-in).

* :func:`lr_decay_schedule`: a 2x100 ReLU MLP trained by SGD with momentum 0.9 with the learning
  rate ``alpha_t = theta_0 / (1 + t / Q) ** theta_1`` (Wu et al., 2018), ``Q = T = 5000``; theta is
  ``{"lr": ln theta_0, "decay": ln theta_1}``. Meta-loss: the training loss of each step, or
  (``meta_loss="telescoping"``) the final loss on a fixed batch of 1000 training examples drawn
  at the start of each run, through the telescoping sum.
* :func:`many_hparams`: a 5-hidden-layer ReLU MLP (at most 100 units per layer), minibatch 100,
  SGD with momentum with a learning rate (exp) and a momentum (sigmoid) for each of the 6 weight
  matrices and 6 bias vectors, and the 5 layer widths through nested dropout (sigmoid -> the
  fraction of the 100 units kept): 29 hyperparameters. Meta-objective: the sum of validation
  losses. ``T = 1000``; the initial values are drawn as the paper does (learning rates
  log-uniform in (1e-4, 1e-2), momenta logit-uniform in (0.01, 0.9), widths logit-uniform in
  (0.2, 0.8)).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lopt_meta.errors import ConfigError, check_positive_int
from tasks import hpo as hp
from tasks.base import UnrolledSystem
from tasks.image_tasks import ImageClassification, ImageState
from tasks.models import MLP

DATASETS = ("fashion_mnist", "digits")


def _dataset(dataset: str) -> str:
  if dataset not in DATASETS:
    raise ConfigError("dataset", f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
  return dataset


# ---------------------------------------------------------------------------------------------
# Learning-rate schedule
# ---------------------------------------------------------------------------------------------

def lr_decay(learning_rate: float | jax.Array, decay: float | jax.Array,
             Q: float) -> optax.Schedule:
  """The schedule ``count -> learning_rate / (1 + count / Q) ** decay`` (an optax schedule)."""
  def schedule(count):
    return learning_rate / (1.0 + count / Q) ** decay
  return schedule


LR_DECAY_SPACE = {"lr": hp.LogUniform(1e-3, 10 ** -0.5), "decay": hp.LogUniform(1e-2, 1e2)}
"""The schedule's hyperparameters; the ranges are Figure 7's axes (log10 lr in (-3, -0.5), log10
decay in (-2, 2)), which the landscape grid spans."""


def lr_decay_schedule(*, horizon: int = 5000, Q: float | None = None, meta_loss: str = "train",
                      momentum: float = 0.9, batch_size: int = 100,
                      hidden_sizes: Sequence[int] = (100, 100), dataset: str = "fashion_mnist",
                      image_size: int | None = None, data_dir: str | None = None,
                      fixed_batch_size: int = 1000, lr: float = 1e-2, decay: float = 10.0,
                      init_seed: int | None = None) -> UnrolledSystem:
  """Tune the initial learning rate and the decay exponent of SGD with momentum.

  Args:
    horizon: ``T``, inner steps per run.
    Q: the schedule's time scale (default ``T``).
    meta_loss: ``"train"`` (the sum of training losses) or ``"telescoping"`` (the final loss on
      a fixed batch of ``fixed_batch_size`` training examples).
    momentum: SGD's momentum.
    batch_size: training minibatch.
    hidden_sizes: the MLP's hidden layers.
    dataset: ``"fashion_mnist"`` or ``"digits"``.
    image_size: resize the images to this side (default: the dataset's own, 28 for FashionMNIST).
    data_dir: where the dataset is (see :mod:`tasks.data`).
    fixed_batch_size: examples in the telescoping meta-loss's fixed batch.
    lr, decay: the starting hyperparameters (``theta_0`` and ``theta_1``), unless ``init_seed``.
    init_seed: draw the starting hyperparameters from :data:`LR_DECAY_SPACE` with this seed.
  """
  if meta_loss not in ("train", "telescoping"):
    raise ConfigError("meta_loss", f"unknown meta_loss {meta_loss!r}; valid: telescoping, train")
  Q = float(horizon if Q is None else Q)
  if not Q > 0:
    raise ConfigError("Q", f"must be positive; got {Q!r}")
  task = ImageClassification("lr_decay_schedule", _dataset(dataset), MLP(tuple(hidden_sizes), 10),
                             batch_size=batch_size, image_size=image_size, data_dir=data_dir)

  def make_optimizer(h):
    return optax.sgd(lr_decay(h["lr"], h["decay"], Q), momentum=momentum)
  system = hp.optax_system(LR_DECAY_SPACE, make_optimizer, task, horizon=horizon,
                           meta_loss=meta_loss, fixed_batch_size=fixed_batch_size,
                           theta0=None if init_seed is not None else {"lr": lr, "decay": decay},
                           init_seed=init_seed, name="lr_decay_schedule")
  return dataclasses.replace(system, constants={"Q": Q})


def schedule_from_json(path: str | Path) -> optax.Schedule:
  """The tuned schedule of a ``meta-train export`` file of an ``lr_decay_schedule`` run, as a
  plain optax schedule (``optax.sgd(schedule_from_json(path), momentum=0.9)``)."""
  exported = json.loads(Path(path).read_text())
  if exported.get("task") != "lr_decay_schedule" or "Q" not in exported:
    raise ConfigError("path", f"{path} is not an export of an lr_decay_schedule run")
  h = exported["hyperparameters"]
  return lr_decay(h["lr"], h["decay"], exported["Q"])


# ---------------------------------------------------------------------------------------------
# Many hyperparameters
# ---------------------------------------------------------------------------------------------

class NestedDropoutMLP(nn.Module):
  """Flattens its input, then ``Dense(h) -> relu -> keep the first k_l units`` for each hidden
  layer ``l`` (``keep``: float32 ``[layers, max(h)]`` masks), then ``Dense(classes)``."""
  hidden_sizes: Sequence[int]
  num_classes: int

  @nn.compact
  def __call__(self, x, keep=None):
    x = jnp.reshape(x, (x.shape[0], -1))
    for layer, h in enumerate(self.hidden_sizes):
      x = nn.relu(nn.Dense(h)(x))
      if keep is not None:
        x = x * keep[layer][:h]
    return nn.Dense(self.num_classes)(x)


class ManyHparamsState(NamedTuple):
  """One inner run of :func:`many_hparams`: parameters, SGD's momentum buffers, data order."""
  params: Any
  velocity: Any
  task_state: ImageState


def many_hparams_space(num_hidden: int = 5) -> dict[str, hp.Transform]:
  """The declaration: ``lr_<l>_kernel``, ``momentum_<l>_kernel``, ``lr_<l>_bias``,
  ``momentum_<l>_bias`` for each of the ``num_hidden + 1`` layers ``l``, then ``width_<l>`` for
  each hidden layer ``l = 1 .. num_hidden``."""
  space = {}
  for layer in range(num_hidden + 1):
    for leaf in ("kernel", "bias"):
      space[f"lr_{layer}_{leaf}"] = hp.LogUniform(1e-4, 1e-2)
      space[f"momentum_{layer}_{leaf}"] = hp.Logit(0.01, 0.9)
  for layer in range(1, num_hidden + 1):
    space[f"width_{layer}"] = hp.Fraction(0.2, 0.8)
  return space


def many_hparams(*, horizon: int = 1000, num_hidden: int = 5, max_units: int = 100,
                 batch_size: int = 100, dataset: str = "fashion_mnist",
                 image_size: int | None = None, data_dir: str | None = None,
                 init_seed: int | None = 0) -> UnrolledSystem:
  """Tune per-block learning rates and momenta and the layer widths of an MLP (29 for 5 layers).

  One step: the next training minibatch, the gradient of the cross-entropy of the masked MLP,
  then per weight block ``b`` SGD with momentum as optax's (``v <- g + m_b v``,
  ``p <- p - lr_b v``); the step's meta-loss is the loss of the updated network on a random
  ``outer_valid`` minibatch (normalized: clipped to ``[0, 1.5 ln 10]``, NaN to the bound).

  Args:
    horizon: ``T``, inner steps per run.
    num_hidden: hidden layers (each with its width hyperparameter).
    max_units: units per hidden layer before nested dropout.
    batch_size: training and validation minibatch.
    dataset, image_size, data_dir: the data (see :func:`lr_decay_schedule`).
    init_seed: seed of the starting hyperparameters' draw (``None``: the ranges' centre).
  """
  check_positive_int("num_hidden", num_hidden)
  check_positive_int("max_units", max_units)
  model = NestedDropoutMLP((max_units,) * num_hidden, 10)
  task = ImageClassification("many_hparams", _dataset(dataset), model, batch_size=batch_size,
                             image_size=image_size, data_dir=data_dir)
  space = many_hparams_space(num_hidden)

  def per_block(hparams, kind):
    """A tree like the parameters holding the hyperparameter ``kind`` of each block."""
    return {f"Dense_{layer}": {leaf: hparams[f"{kind}_{layer}_{leaf}"] for leaf in ("kernel", "bias")}
            for layer in range(num_hidden + 1)}

  def loss(params, batch, keep):
    logits = model.apply({"params": params}, batch["image"], keep)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]))

  def init(key, data):
    del data
    k_params, k_state = jax.random.split(key)
    params = task.init_params(k_params)
    return ManyHparamsState(params=params, velocity=jax.tree.map(jnp.zeros_like, params),
                            task_state=task.init_state(k_state))

  def train_step(hparams, state, key, data):
    keep = jnp.stack([hp.nested_dropout_mask(hparams[f"width_{l}"], max_units)
                      for l in range(1, num_hidden + 1)])
    batch, task_state = task.train_batch(data, state.task_state, key)
    grads = jax.grad(loss)(state.params, batch, keep)
    lr, momentum = per_block(hparams, "lr"), per_block(hparams, "momentum")
    velocity = jax.tree.map(lambda g, m, v: g + m * v, grads, momentum, state.velocity)
    params = jax.tree.map(lambda p, a, v: p - a * v, state.params, lr, velocity)
    valid = task.eval_batch(data, "outer_valid", jax.random.fold_in(key, 1))
    meta = task.normalize(loss(params, valid, keep))
    return ManyHparamsState(params=params, velocity=velocity, task_state=task_state), meta

  return hp.hparam_system(space, init, train_step, horizon=horizon, init_seed=init_seed,
                          name="many_hparams", data=task.data)


REGISTERED: dict[str, Callable[..., UnrolledSystem]] = {
    "lr_decay_schedule": lr_decay_schedule,
    "many_hparams": many_hparams,
}
