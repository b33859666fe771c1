"""The command: runs in folders, around the engine (:mod:`meta_train.engine`).

* :mod:`.cli`: ``meta-train train|resume|eval|export|plot|search|bench``;
* :mod:`.config`: typed configuration, its checks (``ConfigError`` naming the field) and what it
  builds (its flag help imports tyro through :mod:`.flags`, for the command only);
  :mod:`.preflight`: the checks that need the built objects, before compute;
* :mod:`.run`: a run's loop (train, resume, load) over its :class:`~.run.RunSession`;
* :mod:`.checkpointing`: Orbax checkpoints (owner and read-only readers); :mod:`.run_lock`: one
  writer per run folder;
* :mod:`.logs`, :mod:`.progress`, :mod:`.watchdog`: metrics.jsonl and W&B, the progress line,
  hang detection;
* :mod:`.distributed`: several processes (settings, identity, joining, collectives, heartbeat);
* :mod:`.evaluation`, :mod:`.plots`, :mod:`.hpo_plots`, :mod:`.bench`: evaluating theta,
  figures (of hyperparameter searches too), the held-out benchmark.
"""
