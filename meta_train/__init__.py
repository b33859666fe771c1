"""The truncated meta-trainer: gradient estimators, workers, the outer loop and the command.

>>> import meta_train
>>> run = meta_train.load_run("checkpoints/digits-mlp-nres")   # doctest: +SKIP
>>> run.step, run.theta                                         # doctest: +SKIP
"""


def load_run(run_dir, step=None):
  """The run in ``run_dir`` at its latest readable checkpoint (see :func:`meta_train.run.load_run`):
  ``.theta``, ``.step``, ``.config``, ``.state``, ``.metrics``."""
  from meta_train.run import load_run as _load_run  # imports JAX and the trainer lazily
  return _load_run(run_dir, step)


__all__ = ["load_run"]
