"""The Flax models of the inner tasks: MLPs, a small CNN, a CIFAR ResNet, an MLP autoencoder and
the copy task's LSTM."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lopt_meta.errors import ConfigError
from tasks import initializers


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
