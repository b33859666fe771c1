"""Pretrained learned optimizers shipped inside the package (no download).

    tx = lopt_meta.load_pretrained(num_steps=5000)   # the default, for a 5000-step run
    updates, state = tx.update(grads, state, params, loss=loss)   # loss is optional

Each name in :data:`PRETRAINED` has its weights (``NAME.npz``, the ``meta-train export`` format)
and its recipe (``NAME.yaml``: ``meta-train train --config lopt_meta/pretrained/NAME.yaml``
reproduces it) in this folder; the README's card says what it was trained on, with how much
compute, its held-out benchmark and where it fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optax

from lopt_meta.errors import ConfigError
from lopt_meta.export import read_optimizer

FOLDER = Path(__file__).resolve().parent

PRETRAINED: dict[str, str] = {
    "anchored_wc_nres": "AnchoredAdam with its warmup + cosine schedule (Adam x muP at 3e-2 over "
                        "the num_steps it is told, a bounded learned per-tensor multiplier and "
                        "per-parameter correction, progress-aware) meta-trained with NRES over 9 "
                        "tasks (MLPs of widths 64-1024, CNNs, an LSTM); chosen by "
                        "meta-validation; see the README's card",
    "anchored_mix_nres": "AnchoredAdam (Adam x muP at 1e-2, a bounded learned per-tensor "
                         "multiplier and per-parameter correction, progress-aware) meta-trained "
                         "with NRES over 9 tasks (MLPs of widths 64-1024, CNNs, an LSTM); chosen "
                         "by meta-validation; see the README's card",
    "small_mix_nres": "MLPLOpt (LOLv2) meta-trained with NRES over 8 small tasks of different "
                      "structures (digits, FashionMNIST 8x8/28x28 MLPs and CNNs, an LSTM copy "
                      "task); see the README's card",
}
DEFAULT = "anchored_wc_nres"


def path(name: str = DEFAULT) -> Path:
  """The weights file of pretrained optimizer ``name``."""
  if name not in PRETRAINED:
    raise ConfigError("name", f"unknown pretrained optimizer {name!r}; valid: "
                      f"{', '.join(sorted(PRETRAINED))}")
  return FOLDER / f"{name}.npz"


def recipe(name: str = DEFAULT) -> Path:
  """The recipe (a ``meta-train train --config`` file) of pretrained optimizer ``name``."""
  return path(name).with_suffix(".yaml")


def read_pretrained(name: str = DEFAULT) -> tuple[Any, Any, dict[str, Any]]:
  """``(lopt, theta, metadata)`` of pretrained optimizer ``name`` (see
  :func:`lopt_meta.read_optimizer`)."""
  return read_optimizer(path(name))


def load_pretrained(name: str = DEFAULT, *,
                    num_steps: int | None = None) -> optax.GradientTransformationExtraArgs:
  """Pretrained optimizer ``name`` as an optax transformation, with the interface of
  :func:`lopt_meta.load_optimizer`: ``update(grads, state, params, loss=None)``.

  ``num_steps``: the length of your training run, for an optimizer that conditions on its
  progress ``t / num_steps`` (the README's card says what each does without it)."""
  lopt, theta, _ = read_pretrained(name)
  return lopt.as_optax(theta, num_steps=num_steps)
