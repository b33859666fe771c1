"""Ready-made task distributions, registered by name (``--task digits_mix``).

``digits_mix`` needs no files (scikit-learn's digits); ``small_mix`` adds FashionMNIST (8x8 and
28x28) and the LSTM copy task. ``small_mix`` is not the distribution of the pretrained
``small_mix_nres``: its recipe (lopt_meta/pretrained/small_mix_nres.yaml) declares its own members
under the same name (these seven and a digits CNN, without these augmentations).
"""

from __future__ import annotations

from tasks.distribution import Distribution, Member
from tasks.inner_training import Augmentation


def _mlp(dataset, hidden, activation="relu", *, image_size=None, batch_size=128, horizon=1000):
  options = {"dataset": dataset, "hidden_sizes": tuple(hidden), "activation": activation,
             "batch_size": batch_size}
  if image_size is not None:
    options["image_size"] = image_size
  return Member("image_mlp", options, horizon=horizon)


def _conv(dataset, channels, *, image_size=None, batch_size=128, horizon=1000):
  options = {"dataset": dataset, "channels": tuple(channels), "batch_size": batch_size}
  if image_size is not None:
    options["image_size"] = image_size
  return Member("image_conv", options, horizon=horizon)


DIGITS_MIX = Distribution(
    members=(_mlp("digits", (32,), batch_size=128, horizon=500),
             _mlp("digits", (64, 32), "tanh", batch_size=64, horizon=300),
             _mlp("digits", (16, 16, 16), "gelu", batch_size=32, horizon=400),
             _conv("digits", (8, 16), batch_size=64, horizon=300)),
    augment=Augmentation(param_scale=(1e-2, 1e2), label_noise=0.05),
    truncation="log_uniform")

SMALL_MIX = Distribution(
    members=(_mlp("digits", (32,), horizon=500),
             _mlp("digits", (16, 16, 16), "gelu", batch_size=32, horizon=400),
             _mlp("fashion_mnist", (32,), image_size=8, horizon=1000),
             _mlp("fashion_mnist", (64, 32), "tanh", image_size=8, batch_size=64,
                  horizon=500),
             _mlp("fashion_mnist", (32,), batch_size=64, horizon=500),
             _conv("fashion_mnist", (8, 16), image_size=8, horizon=500),
             Member("lstm_copy", {"hidden_size": 32, "max_length": 8}, horizon=300)),
    augment=Augmentation(param_scale=(1e-3, 1e3), label_noise=0.05),
    truncation="log_uniform")
