"""Image classification and autoencoding of an image dataset by a Flax model (inner tasks).

Factories (registered in :mod:`tasks.catalog`): ``fashion_mnist_mlp`` (8x8 images, 64 -> 32 -> 10
ReLU, batch 128), ``fashion_mnist_mlp28`` (784 -> 32 -> 10), ``digits_mlp`` (scikit-learn's
digits, the 8x8 MLP: the offline default), ``cifar10_resnet`` (a ResNet-8 on 32x32x3), and the
general ``image_mlp``, ``image_conv`` and ``image_autoencoder`` (any dataset of
:data:`tasks.data.NUM_CLASSES`, the tables included; any size, widths, activation and batch
size: the members of task distributions, :mod:`tasks.distribution`, and of the held-out
benchmark, :mod:`tasks.heldout`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lopt_meta.errors import ConfigError
from lopt_meta.prng import as_typed_key
from tasks import data as data_lib
from tasks.inner_task import InnerTask
from tasks.models import MLP, Autoencoder, ConvNet, ResNet, check_activation


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


class ImageAutoencoder(ImageClassification):
  """Reconstruct an image dataset's images: the loss is the mean squared error between the
  sigmoid of the model's output and the pixels in ``[0, 1]`` (labels unused); ``normalize``
  clips it to ``[0, 1]`` (NaN to 1)."""

  def loss(self, params, batch):
    out = jax.nn.sigmoid(self.model.apply({"params": params}, batch["image"]))
    return jnp.mean((out - batch["image"]) ** 2)

  def normalize(self, loss):
    return jnp.where(jnp.isnan(loss), 1.0, jnp.clip(loss, 0.0, 1.0))


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
