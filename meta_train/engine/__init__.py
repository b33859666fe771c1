"""The engine: how ES estimates are computed, independent of any run folder or command line.

* :mod:`.estimators`: one file per estimator, each stating its rule (NRES, PES, GPES_K, FullES,
  truncated ES, truncated backprop) and :class:`~.estimators.OverTasks` over a task distribution;
* :mod:`.window`: how the particles run one window of ``W`` steps (plan, noise segments, the
  scan, the sums, burn-in and the truncated-backprop window);
* :mod:`.workers`: the persistent worker state and step-unlocking;
* :mod:`.trainer`: the outer loop as one compiled ``lax.scan`` (:class:`~.trainer.Trainer`);
* :mod:`.keys`, :mod:`.maths`, :mod:`.tree`: key derivation, the estimators' arithmetic
  conventions, pytree helpers;
* :mod:`.sharding`, :mod:`.xla_cpu`: pairs over devices, and CPU code-generation workarounds.

Nothing here reads or writes files; the command layer (:mod:`meta_train.command`) does.
"""
