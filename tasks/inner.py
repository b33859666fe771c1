"""Inner training tasks: what a learned optimizer trains.

An :class:`InnerTask` is pure functions over pytrees, with its data passed in explicitly::

    params = task.init_params(key)                     # a Flax model's parameters
    state = task.init_state(key)                       # per-episode: data order, curriculum
    batch, state = task.train_batch(data, state, key)  # the next training batch
    loss = task.loss(params, batch)                    # mean loss on the batch
    state = task.update_state(state, loss)             # e.g. the copy task's curriculum
    batch = task.eval_batch(data, "outer_valid", key)  # a random batch of another split

``task.data`` holds the device arrays (``None`` for tasks that generate their data);
``task.normalize(loss)`` clips a loss to ``[0, 1.5 ln(num_classes)]`` and maps NaN to that bound
(the meta-loss of learned-optimizer training never leaves that range).

Registered tasks (:data:`INNER_TASKS`): ``fashion_mnist_mlp`` (8x8 images, 64 -> 32 -> 10 ReLU,
batch 128), ``fashion_mnist_mlp28`` (784 -> 32 -> 10), ``digits_mlp`` (scikit-learn's digits, the
8x8 MLP: the offline default), ``cifar10_resnet`` (a ResNet-8 on 32x32x3), ``lstm_copy``, and the
general ``image_mlp``, ``image_conv`` and ``image_autoencoder`` (any dataset of
:data:`tasks.data.NUM_CLASSES`, the tables included; any size, widths, activation and batch
size: the members of task distributions, :mod:`tasks.distribution`, and of the held-out
benchmark, :mod:`tasks.heldout`).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lopt_meta.errors import ConfigError, build_named
from lopt_meta.prng import as_typed_key
from tasks import data as data_lib
from tasks import copy_sequences, initializers

PyTree = Any


class InnerTask(abc.ABC):
  """A training problem for a learned optimizer (see the module docstring)."""

  name: str
  num_classes: int
  batch_size: int
  data: Any = None

  @abc.abstractmethod
  def init_params(self, key: jax.Array) -> PyTree:
    """Fresh model parameters (``key``: typed, or a raw ``uint32[2]`` key with the same bits)."""

  @abc.abstractmethod
  def init_state(self, key: jax.Array) -> PyTree:
    """A fresh episode's task state (data order, curriculum)."""

  @abc.abstractmethod
  def train_batch(self, data: Any, state: PyTree, key: jax.Array) -> tuple[PyTree, PyTree]:
    """The next training batch and the advanced task state."""

  @abc.abstractmethod
  def eval_batch(self, data: Any, split: str, key: jax.Array, *,
                 batch_size: int | None = None) -> PyTree:
    """A random batch of ``split`` (``inner_valid``, ``outer_valid``, ``test`` or ``train``) of
    ``batch_size`` examples (default: the task's)."""

  @abc.abstractmethod
  def loss(self, params: PyTree, batch: PyTree) -> jax.Array:
    """The mean loss of the model on the batch."""

  def update_state(self, state: PyTree, loss: jax.Array) -> PyTree:
    """Task state after a training step with loss ``loss`` (default: unchanged)."""
    del loss
    return state

  def normalize(self, loss: jax.Array) -> jax.Array:
    """``loss`` clipped to ``[0, 1.5 ln(num_classes)]``, NaN mapped to the upper bound."""
    bound = 1.5 * math.log(self.num_classes)
    return jnp.where(jnp.isnan(loss), bound, jnp.clip(loss, 0.0, bound))

  def __repr__(self):
    return f"{type(self).__name__}({self.name!r})"


# ---------------------------------------------------------------------------------------------
# Image classification
# ---------------------------------------------------------------------------------------------

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu, "tanh": jnp.tanh, "gelu": nn.gelu, "elu": nn.elu, "sigmoid": nn.sigmoid}


def check_activation(activation: str) -> None:
  if activation not in ACTIVATIONS:
    raise ConfigError("activation", f"unknown activation {activation!r}; valid: "
                      f"{', '.join(sorted(ACTIVATIONS))}")


class MLP(nn.Module):
  """Flattens its input, then ``Dense(h) -> activation`` for each hidden size, then
  ``Dense(classes)``."""
  hidden_sizes: Sequence[int]
  num_classes: int
  activation: str = "relu"

  @nn.compact
  def __call__(self, x):
    x = jnp.reshape(x, (x.shape[0], -1))
    for h in self.hidden_sizes:
      x = ACTIVATIONS[self.activation](nn.Dense(h)(x))
    return nn.Dense(self.num_classes)(x)


class ConvNet(nn.Module):
  """A small CNN: for each channel count a 3x3 convolution (stride 2) and the activation, then
  global average pooling and ``Dense(classes)``."""
  channels: Sequence[int]
  num_classes: int
  activation: str = "relu"

  @nn.compact
  def __call__(self, x):
    for c in self.channels:
      x = ACTIVATIONS[self.activation](nn.Conv(c, (3, 3), strides=2)(x))
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


class ResidualBlock(nn.Module):
  """Two 3x3 convolutions with GroupNorm and a projection shortcut when the shape changes."""
  channels: int
  stride: int = 1

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(self.channels, (3, 3), strides=self.stride, use_bias=False)(x)
    y = nn.relu(nn.GroupNorm(num_groups=min(8, self.channels))(y))
    y = nn.Conv(self.channels, (3, 3), use_bias=False)(y)
    y = nn.GroupNorm(num_groups=min(8, self.channels))(y)
    if x.shape[-1] != self.channels or self.stride != 1:
      x = nn.Conv(self.channels, (1, 1), strides=self.stride, use_bias=False)(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """A small CIFAR ResNet: 3x3 stem, ``blocks_per_stage`` residual blocks per stage at widths
  ``widths`` (stride 2 between stages), global average pooling, ``Dense(classes)``. The default
  (one block per stage at 16/32/64) is ResNet-8. GroupNorm instead of BatchNorm keeps the model
  stateless, so a training step is a pure function of the parameters."""
  num_classes: int
  widths: Sequence[int] = (16, 32, 64)
  blocks_per_stage: int = 1

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.widths[0], (3, 3), use_bias=False)(x)
    x = nn.relu(nn.GroupNorm(num_groups=min(8, self.widths[0]))(x))
    for stage, width in enumerate(self.widths):
      for block in range(self.blocks_per_stage):
        x = ResidualBlock(width, stride=2 if (stage > 0 and block == 0) else 1)(x)
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


class ImageState(NamedTuple):
  """Per-episode data order: a data seed (``uint32 [2]``, a key's data) and the examples
  consumed so far."""
  seed: jax.Array
  position: jax.Array  # shape=(), dtype=int32


class ImageClassification(InnerTask):
  """Softmax cross-entropy classification of an image dataset by a Flax model.

  Training batches walk through the train split in a fresh random order every epoch
  (:func:`tasks.data.epoch_indices`); evaluation batches are drawn at random.
  """

  def __init__(self, name: str, dataset: str, model: nn.Module, *, batch_size: int = 128,
               image_size: int | None = None, data_dir: str | None = None):
    self.name = name
    self.dataset = dataset
    self.model = model
    self.batch_size = int(batch_size)
    self.num_classes = data_lib.NUM_CLASSES[dataset]
    self.data = data_lib.load(dataset, data_dir=data_dir, image_size=image_size)
    if self.batch_size > self.data["train"].labels.shape[0]:
      raise ConfigError("batch_size", f"{batch_size} is larger than the train split "
                        f"({self.data['train'].labels.shape[0]} examples)")
    self._example = self.data["train"].images[:1].astype(jnp.float32)

  def init_params(self, key):
    return self.model.init(as_typed_key(key), self._example)["params"]

  def init_state(self, key):
    return ImageState(seed=jax.random.key_data(as_typed_key(key)),
                      position=jnp.zeros((), jnp.int32))

  def train_batch(self, data, state, key):
    del key
    split = data["train"]
    idx = data_lib.epoch_indices(split, state.seed, state.position, self.batch_size)
    return data_lib.gather(split, idx), state._replace(position=state.position + self.batch_size)

  def eval_batch(self, data, split, key, *, batch_size=None):
    size = self.batch_size if batch_size is None else batch_size
    return data_lib.gather(data[split], data_lib.random_indices(data[split], key, size))

  def loss(self, params, batch):
    logits = self.model.apply({"params": params}, batch["image"])
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]))


class Autoencoder(nn.Module):
  """An MLP autoencoder: flatten, ``Dense(h) -> activation`` for each hidden size, then a
  ``Dense`` back to the input's size (logits of the pixels)."""
  hidden_sizes: Sequence[int]
  activation: str = "relu"

  @nn.compact
  def __call__(self, x):
    flat = jnp.reshape(x, (x.shape[0], -1))
    h = flat
    for size in self.hidden_sizes:
      h = ACTIVATIONS[self.activation](nn.Dense(size)(h))
    return jnp.reshape(nn.Dense(flat.shape[-1])(h), x.shape)


class ImageAutoencoder(ImageClassification):
  """Reconstruct an image dataset's images: the loss is the mean squared error between the
  sigmoid of the model's output and the pixels in ``[0, 1]`` (labels unused); ``normalize``
  clips it to ``[0, 1]`` (NaN to 1)."""

  def loss(self, params, batch):
    out = jax.nn.sigmoid(self.model.apply({"params": params}, batch["image"]))
    return jnp.mean((out - batch["image"]) ** 2)

  def normalize(self, loss):
    return jnp.where(jnp.isnan(loss), 1.0, jnp.clip(loss, 0.0, 1.0))


# ---------------------------------------------------------------------------------------------
# LSTM copy task
# ---------------------------------------------------------------------------------------------

class CopyState(NamedTuple):
  """The curriculum: the current longest string ``length`` and a moving average of the loss."""
  length: jax.Array  # shape=(), dtype=int32
  average_loss: jax.Array  # shape=(), dtype=float32


class CopyModel(nn.Module):
  """A 1-layer LSTM over one-hot tokens, then a Dense readout of 2 bit logits per position.

  The recurrent kernels start orthogonal, as Flax's default, from :func:`tasks.initializers.
  orthogonal` (no LAPACK: jaxlib 0.10's batched CPU QR deadlocks a vmapped initialization)."""
  hidden_size: int

  @nn.compact
  def __call__(self, tokens):  # tokens: [B, S] int32 in {0, 1, 2 (delimiter), 3 (blank)}
    x = jax.nn.one_hot(tokens, 4)
    cell = nn.OptimizedLSTMCell(self.hidden_size, recurrent_kernel_init=initializers.orthogonal())
    lstm = nn.RNN(cell)
    return nn.Dense(2)(lstm(x))


class CopyTask(InnerTask):
  """Copy a random binary string: read ``L`` bits, a delimiter, then output the bits.

  A sequence has ``2 max_length + 1`` positions: the bits, a delimiter, then blanks during which
  the model must emit the bits (padding past ``2 L + 1`` is masked). The loss is the mean
  cross-entropy over the output positions. Curriculum: each batch draws its lengths uniformly
  from ``{max(1, L - 5) .. L}``; when the moving average of the loss (decay 0.9) drops below
  ``threshold`` nats per bit, ``L`` grows by one (up to ``max_length``) and the average restarts.
  """

  def __init__(self, name: str = "lstm_copy", *, hidden_size: int = 64, batch_size: int = 32,
               start_length: int = 2, max_length: int = 20, threshold: float = 0.15):
    if not 1 <= start_length <= max_length:
      raise ConfigError("start_length", f"must be in [1, max_length={max_length}]; got {start_length}")
    self.name = name
    self.model = CopyModel(hidden_size=hidden_size)
    self.batch_size = int(batch_size)
    self.start_length, self.max_length = int(start_length), int(max_length)
    self.threshold = float(threshold)
    self.num_classes = 2
    self.data = None

  @property
  def sequence_length(self) -> int:
    return 2 * self.max_length + 1

  def init_params(self, key):
    return self.model.init(as_typed_key(key),
                           jnp.zeros((1, self.sequence_length), jnp.int32))["params"]

  def init_state(self, key):
    del key
    return CopyState(length=jnp.asarray(self.start_length, jnp.int32),
                     average_loss=jnp.asarray(math.log(2.0), jnp.float32))

  def _batch(self, key, longest, batch_size=None):
    size = self.batch_size if batch_size is None else batch_size
    batch = copy_sequences.draw(key, longest, size, self.max_length, per_sequence=True)
    return {"tokens": batch.tokens, "targets": batch.targets, "mask": batch.writes}

  def train_batch(self, data, state, key):
    del data
    return self._batch(key, state.length), state

  def eval_batch(self, data, split, key, *, batch_size=None):
    del data, split
    return self._batch(key, jnp.asarray(self.max_length, jnp.int32), batch_size)

  def loss(self, params, batch):
    logits = self.model.apply({"params": params}, batch["tokens"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    mask = batch["mask"].astype(jnp.float32)
    return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)

  def update_state(self, state, loss):
    avg = 0.9 * state.average_loss + 0.1 * jnp.where(jnp.isfinite(loss), loss, math.log(2.0))
    grow = (avg < self.threshold) & (state.length < self.max_length)
    return CopyState(length=state.length + grow.astype(jnp.int32),
                     average_loss=jnp.where(grow, jnp.float32(math.log(2.0)), avg))


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

def fashion_mnist_mlp(*, batch_size: int = 128, hidden_sizes: Sequence[int] = (32,),
                      data_dir: str | None = None) -> ImageClassification:
  """FashionMNIST resized to 8x8, MLP 64 -> 32 -> 10 (ReLU), batch 128."""
  return ImageClassification("fashion_mnist_mlp", "fashion_mnist",
                             MLP(tuple(hidden_sizes), 10), batch_size=batch_size, image_size=8,
                             data_dir=data_dir)


def fashion_mnist_mlp28(*, batch_size: int = 128, hidden_sizes: Sequence[int] = (32,),
                        data_dir: str | None = None) -> ImageClassification:
  """FashionMNIST at 28x28, MLP 784 -> 32 -> 10 (ReLU), batch 128."""
  return ImageClassification("fashion_mnist_mlp28", "fashion_mnist",
                             MLP(tuple(hidden_sizes), 10), batch_size=batch_size, data_dir=data_dir)


def digits_mlp(*, batch_size: int = 128, hidden_sizes: Sequence[int] = (32,)) -> ImageClassification:
  """scikit-learn's bundled 8x8 digits, MLP 64 -> 32 -> 10 (ReLU), batch 128: no download."""
  return ImageClassification("digits_mlp", "digits", MLP(tuple(hidden_sizes), 10),
                             batch_size=batch_size)


def _image_task_name(dataset: str, image_size: int | None, kind: str, widths: str,
                     activation: str, batch_size: int) -> str:
  """The name of a general image task, its activation checked first:
  ``DATASET[SIZE]_KIND_WIDTHS_ACTIVATION_bBATCH``."""
  check_activation(activation)
  size = "" if image_size is None else f"{image_size}"
  return f"{dataset}{size}_{kind}_{widths}_{activation}_b{batch_size}"


def image_mlp(*, dataset: str = "digits", image_size: int | None = None,
              hidden_sizes: Sequence[int] = (32,), activation: str = "relu",
              batch_size: int = 128, data_dir: str | None = None) -> ImageClassification:
  """An MLP on any image dataset (``digits``, ``fashion_mnist``, ``cifar10``), optionally resized
  to ``image_size`` squared: ``hidden_sizes`` layers of ``activation``."""
  name = _image_task_name(dataset, image_size, "mlp", "x".join(map(str, hidden_sizes)) or "linear",
                          activation, batch_size)
  return ImageClassification(name, dataset, MLP(tuple(hidden_sizes), data_lib.NUM_CLASSES.get(
      dataset, 10), activation), batch_size=batch_size, image_size=image_size, data_dir=data_dir)


def image_conv(*, dataset: str = "digits", image_size: int | None = None,
               channels: Sequence[int] = (8, 16), activation: str = "relu",
               batch_size: int = 128, data_dir: str | None = None) -> ImageClassification:
  """A small CNN (:class:`ConvNet`) on any image dataset, optionally resized."""
  name = _image_task_name(dataset, image_size, "conv", "x".join(map(str, channels)), activation,
                          batch_size)
  return ImageClassification(name, dataset, ConvNet(tuple(channels), data_lib.NUM_CLASSES.get(
      dataset, 10), activation), batch_size=batch_size, image_size=image_size, data_dir=data_dir)


def image_autoencoder(*, dataset: str = "digits", image_size: int | None = None,
                      hidden_sizes: Sequence[int] = (32,), activation: str = "relu",
                      batch_size: int = 128, data_dir: str | None = None) -> ImageAutoencoder:
  """An MLP autoencoder (:class:`Autoencoder`) of an image dataset's images."""
  name = _image_task_name(dataset, image_size, "autoencoder", "x".join(map(str, hidden_sizes)),
                          activation, batch_size)
  return ImageAutoencoder(name, dataset, Autoencoder(tuple(hidden_sizes), activation),
                          batch_size=batch_size, image_size=image_size, data_dir=data_dir)


def cifar10_resnet(*, batch_size: int = 128, widths: Sequence[int] = (16, 32, 64),
                   blocks_per_stage: int = 1, data_dir: str | None = None) -> ImageClassification:
  """CIFAR-10 (32x32x3), ResNet-8 by default (GroupNorm), batch 128."""
  return ImageClassification("cifar10_resnet", "cifar10",
                             ResNet(10, tuple(widths), blocks_per_stage), batch_size=batch_size,
                             data_dir=data_dir)


def lstm_copy(*, hidden_size: int = 64, batch_size: int = 32, start_length: int = 2,
              max_length: int = 20, threshold: float = 0.15) -> CopyTask:
  """The copy task with a 1-layer LSTM and a length curriculum."""
  return CopyTask(hidden_size=hidden_size, batch_size=batch_size, start_length=start_length,
                  max_length=max_length, threshold=threshold)


INNER_TASKS: dict[str, Callable[..., InnerTask]] = {
    "fashion_mnist_mlp": fashion_mnist_mlp,
    "fashion_mnist_mlp28": fashion_mnist_mlp28,
    "digits_mlp": digits_mlp,
    "cifar10_resnet": cifar10_resnet,
    "lstm_copy": lstm_copy,
    "image_mlp": image_mlp,
    "image_conv": image_conv,
    "image_autoencoder": image_autoencoder,
}


def get_inner_task(name: str, **options) -> InnerTask:
  """Builds inner task ``name``; unknown names and options are a ConfigError listing valid ones."""
  return build_named("task", INNER_TASKS, name, options)
