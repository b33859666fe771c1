"""The optimizer registry: a plain dict from name to a :class:`~lopt_meta.base.LearnedOptimizer`
class, built with keyword options (``meta-train --lopt NAME --lopt-option ...``, exported files).
"""

from __future__ import annotations

from lopt_meta.adafac_mlp_lopt import AdafacMLPLOpt
from lopt_meta.anchored_adam import AnchoredAdam
from lopt_meta.base import LearnedOptimizer
from lopt_meta.baselines import SGDM, Adam, HyperAdam, LRScheduleSGDM
from lopt_meta.errors import build_named
from lopt_meta.mlp_lopt import MLPLOpt
from lopt_meta.nominal_mlp_lopt import NominalMLPLOpt

OPTIMIZERS: dict[str, type[LearnedOptimizer]] = {
    "mlp": MLPLOpt,
    "adafac": AdafacMLPLOpt,
    "nominal_mlp": NominalMLPLOpt,
    "anchored_adam": AnchoredAdam,
    "adam": Adam,
    "sgdm": SGDM,
    "hyper_adam": HyperAdam,
    "lr_schedule": LRScheduleSGDM,
}


def get_optimizer(name: str, **options) -> LearnedOptimizer:
  """Builds optimizer ``name``; unknown names and options are a ConfigError listing valid ones."""
  return build_named("lopt", OPTIMIZERS, name, options)
