"""lopt-meta: learned optimizers meta-trained with online evolution strategies.

The three import packages:

* ``lopt_meta`` (this one): what is meta-trained and exported, and what every layer shares
  (:class:`ConfigError`).
* ``tasks``: unrolled systems (``tasks.UnrolledSystem``) and their registry (``tasks.get``).
* ``meta_train``: gradient estimators (``meta_train.estimators``), the outer loop and the
  ``meta-train`` command.
"""

from lopt_meta.errors import ConfigError

__version__ = "0.1.0"

__all__ = ["ConfigError", "__version__"]
