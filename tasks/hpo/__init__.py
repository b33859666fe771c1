"""Hyperparameter optimization: a declared space, the systems that train with it, the ES-Single
paper's tasks, and the random and grid search baselines (their figures, which read run
folders, are the command layer's :mod:`meta_train.command.hpo_plots`).

* :mod:`.space`: transforms from unconstrained theta to hyperparameters (``LogUniform``,
  ``Logit``, ``Fraction``, ``Uniform``), drawing, constraining and writing them;
* :mod:`.systems`: :func:`hparam_system` (any training loop) and :func:`optax_system` (an optax
  optimizer factory on an inner task) as :class:`tasks.UnrolledSystem`;
* :mod:`.paper_tasks`: the paper's ``lr_decay_schedule`` and ``many_hparams`` (registered in
  :mod:`tasks.registry`);
* :mod:`.search`: random and grid search over a system's space (``meta-train search``).
"""

from tasks.hpo.space import (Fraction, Logit, LogUniform, Space, Transform, Uniform, centre,
                             check_space, constrain, initial_theta, nested_dropout_mask, sample,
                             space_from_dict, space_to_dict, to_json, unconstrain,
                             units_kept)
from tasks.hpo.systems import hparam_system, optax_system

__all__ = ["Fraction", "LogUniform", "Logit", "Space", "Transform", "Uniform", "centre",
           "check_space", "constrain", "space_from_dict", "space_to_dict", "hparam_system", "initial_theta", "nested_dropout_mask",
           "optax_system", "sample", "to_json", "unconstrain", "units_kept"]
