"""``python -m meta_train ...`` is the ``meta-train`` command."""

import sys

from meta_train.command.cli import main

if __name__ == "__main__":
  sys.exit(main())
