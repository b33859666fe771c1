"""The held-out benchmark suite, and the meta-validation tasks: tasks that no training
distribution of this project contains.

:data:`SUITE` is what ``meta-train bench`` reports; :data:`VALIDATION` is what a run judges its
checkpoints by while it meta-trains (``--heldout-every``, :mod:`meta_train.command.validation`).
The two share no task, so that choosing a checkpoint by meta-validation does not tune it to the
bench.

Each task differs from everything in the registered distributions (``tasks.names("distribution")``) and the pretrained recipes in
data (scikit-learn's breast-cancer table, a synthetic 40-feature table), architecture (a
128x128 MLP, an autoencoder, a wider CNN at another resolution) or objective (reconstruction),
and runs 2-6x longer than the training horizons of its kind (MLPs 400-1000 steps, CNNs 300-500). ``meta-train bench`` trains
each with the optimizer under test and with Adam, AdamW and SGD with momentum, each tuned per
task on a learning-rate grid (:mod:`meta_train.command.bench`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from lopt_meta.errors import ConfigError
from tasks import registry
from tasks.inner_task import InnerTask


@dataclasses.dataclass(frozen=True)
class HeldOutTask:
  """One task of the suite: an inner task (registered name and options) and its length."""
  name: str
  task: str
  options: Mapping[str, Any]
  steps: int

  def build(self, data_dir: str | None = None) -> InnerTask:
    options = dict(self.options)
    if data_dir is not None and options.get("dataset") == "fashion_mnist":
      options["data_dir"] = data_dir
    return registry.build(self.task, **options)


SUITE: tuple[HeldOutTask, ...] = (
    HeldOutTask("fmnist28_mlp_128x128", "image_mlp",
                {"dataset": "fashion_mnist", "hidden_sizes": (128, 128), "batch_size": 128}, 2000),
    HeldOutTask("fmnist16_conv_8x16x32", "image_conv",
                {"dataset": "fashion_mnist", "image_size": 16, "channels": (8, 16, 32),
                 "batch_size": 32}, 1000),
    HeldOutTask("synthetic_mlp_64x64_tanh", "image_mlp",
                {"dataset": "synthetic", "hidden_sizes": (64, 64), "activation": "tanh",
                 "batch_size": 64}, 3000),
    HeldOutTask("breast_cancer_mlp_64", "image_mlp",
                {"dataset": "breast_cancer", "hidden_sizes": (64,), "batch_size": 32}, 2000),
    HeldOutTask("digits_autoencoder_64x16x64", "image_autoencoder",
                {"dataset": "digits", "hidden_sizes": (64, 16, 64), "batch_size": 64}, 3000),
)


VALIDATION: tuple[HeldOutTask, ...] = (
    HeldOutTask("fmnist8_mlp_256x256", "image_mlp",
                {"dataset": "fashion_mnist", "image_size": 8, "hidden_sizes": (256, 256),
                 "batch_size": 128}, 1000),
    HeldOutTask("fmnist12_conv_16x32", "image_conv",
                {"dataset": "fashion_mnist", "image_size": 12, "channels": (16, 32),
                 "batch_size": 64}, 600),
    HeldOutTask("fmnist28_mlp_3x64_gelu", "image_mlp",
                {"dataset": "fashion_mnist", "hidden_sizes": (64, 64, 64), "activation": "gelu",
                 "batch_size": 32}, 800),
)
"""Meta-validation: a wider MLP, another CNN and a deeper MLP than any training distribution,
none of :data:`SUITE`'s tasks, and none that a run can drive to zero loss (a ratio of two
near-zero losses says nothing)."""


def suite(names: tuple[str, ...] | None = None, *, steps_scale: float = 1.0) -> tuple[HeldOutTask, ...]:
  """The suite (or the named tasks of it), each run ``steps_scale`` times its length."""
  chosen = SUITE
  if names:
    known = {t.name: t for t in SUITE}
    for name in names:
      if name not in known:
        raise ConfigError("tasks", f"unknown held-out task {name!r}; valid: "
                          f"{', '.join(known)}")
    chosen = tuple(known[n] for n in names)
  if steps_scale <= 0:
    raise ConfigError("steps_scale", f"must be positive; got {steps_scale}")
  return tuple(dataclasses.replace(t, steps=max(1, int(round(t.steps * steps_scale))))
               for t in chosen)
