"""The truncated meta-trainer, in two layers:

* :mod:`meta_train.engine`: estimators, the window engine, workers, the outer loop (no files);
* :mod:`meta_train.command`: runs in folders, checkpoints, logs, the ``meta-train`` command.

The public API: :mod:`meta_train.estimators`, :class:`meta_train.Trainer` and
:func:`meta_train.load_run`.

>>> import meta_train
>>> run = meta_train.load_run("checkpoints/digits-mlp-nres")   # doctest: +SKIP
>>> run.step, run.theta                                         # doctest: +SKIP
"""


def load_run(run_dir, step=None):
  """The run in ``run_dir`` at its latest readable checkpoint (see
  :func:`meta_train.command.run.load_run`): ``.theta``, ``.step``, ``.config``, ``.state``
  (as the checkpoint records it), ``.meta``, ``.metrics``. Builds nothing and writes nothing."""
  from meta_train.command.run import load_run as _load_run  # imports JAX and the trainer lazily
  return _load_run(run_dir, step)


def __getattr__(name):
  if name in ("Trainer", "TrainState"):  # imported on first use: `import meta_train` stays light
    from meta_train.engine import trainer
    return getattr(trainer, name)
  raise AttributeError(f"module 'meta_train' has no attribute {name!r}")


__all__ = ["TrainState", "Trainer", "load_run"]
