"""The ``meta-train`` command.

    meta-train train --task toy2d --estimator nres --num-particles 100 --sigma 0.1 \\
        --unroll-length 10 --outer-steps 10000 --outer-lr 1e-2 --seed 0 --out DIR

Flags come from the typed configuration in :mod:`meta_train.config` (via ``tyro``). Bad
configuration ends with one line ``meta-train: error: FIELD: ...`` and exit status 2, before any
compute and without touching what is already saved.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import tyro

from lopt_meta.errors import ConfigError
from meta_train import config as config_lib

EXIT_USAGE = 2


def train_command(config: config_lib.TrainConfig, overwrite: bool = False) -> None:
  """Meta-train theta of a registered task with an online ES estimator.

  Writes config.json and metrics.jsonl (one JSON object per logged step) to the run folder.

  Args:
    config: the run's configuration.
    overwrite: replace the files of a run already in the run folder.
  """
  from meta_train import trainer  # imports JAX: keep --help fast
  trainer.train(config, overwrite=overwrite)


COMMANDS = {"train": train_command}


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    tyro.extras.subcommand_cli_from_dict(
        COMMANDS, prog="meta-train", args=argv, config=(tyro.conf.OmitArgPrefixes,),
        description="Meta-train learned optimizers and other unrolled systems with online ES.")
  except ConfigError as e:
    print(f"meta-train: error: {e}", file=sys.stderr)
    return EXIT_USAGE
  return 0


if __name__ == "__main__":
  sys.exit(main())
