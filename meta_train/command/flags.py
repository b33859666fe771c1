"""The ``tyro`` module, imported only when the ``meta-train`` command builds its flags.

The configuration classes (:mod:`.config`) and the commands (:mod:`.cli`) carry their flag help in
string annotations (PEP 563) such as ``Annotated[int, flags.tyro().conf.arg(help=...)]``, which
only tyro evaluates: importing those modules (a reader of runs, a library user) never imports
tyro.
"""

from __future__ import annotations


def tyro():
  """The ``tyro`` module (needed by the command only)."""
  import tyro as tyro_module
  return tyro_module
