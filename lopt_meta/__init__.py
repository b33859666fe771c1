"""lopt-meta: learned optimizers meta-trained with online evolution strategies.

The three import packages:

* ``lopt_meta`` (this one): what is meta-trained and exported (learned optimizers and
  hand-designed ones behind the same interface), and what every layer shares
  (:class:`ConfigError`).
* ``tasks``: unrolled systems (``tasks.UnrolledSystem``) and their registry (``tasks.get``),
  inner training tasks and datasets.
* ``meta_train``: gradient estimators (``meta_train.estimators``), the outer loop and the
  ``meta-train`` command.

>>> import jax, lopt_meta
>>> sorted(lopt_meta.OPTIMIZERS)
['adafac', 'adam', 'anchored_adam', 'hyper_adam', 'lr_schedule', 'mlp', 'nominal_mlp', 'sgdm']
"""

from __future__ import annotations

from lopt_meta.adafac_mlp_lopt import AdafacMLPLOpt
from lopt_meta.anchored_adam import AnchoredAdam
from lopt_meta.base import LearnedOptimizer
from lopt_meta.baselines import SGDM, Adam, HyperAdam, LRScheduleSGDM
from lopt_meta.errors import ConfigError
from lopt_meta.export import load_optimizer, read_optimizer, save_optimizer
from lopt_meta.mlp_lopt import MLPLOpt
from lopt_meta.nominal_mlp_lopt import NominalMLPLOpt
from lopt_meta.pretrained import PRETRAINED, load_pretrained, read_pretrained
from lopt_meta.registry import OPTIMIZERS, get_optimizer

__version__ = "0.1.0"

__all__ = ["OPTIMIZERS", "Adam", "AdafacMLPLOpt", "AnchoredAdam", "ConfigError", "HyperAdam", "LRScheduleSGDM",
           "LearnedOptimizer", "MLPLOpt", "NominalMLPLOpt", "PRETRAINED", "SGDM", "__version__", "get_optimizer",
           "load_optimizer", "load_pretrained", "read_optimizer", "read_pretrained",
           "save_optimizer"]
