"""The learned-optimizer interface: an optimizer family indexed by meta-parameters ``theta``.

A learned optimizer is two pure functions, as in optax, plus the meta-parameters they read::

    lopt = lopt_meta.MLPLOpt()
    theta = lopt.init_theta(key)                      # the meta-parameters: a plain pytree
    state = lopt.init(params, num_steps=T)            # the inner optimizer state
    updates, state = lopt.update(theta, grads, state, params, loss=loss)
    params = optax.apply_updates(params, updates)     # updates are added, as in optax

``lopt.as_optax(theta)`` closes over theta and returns an ``optax.GradientTransformationExtraArgs``
that any Flax/optax training loop can use (``loss`` may come through the extra arguments).
Hand-designed optimizers implement the same interface with an empty or hyperparameter ``theta``.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import jax
import optax

PyTree = Any


class LearnedOptimizer(abc.ABC):
  """An optimizer ``update(theta, grads, state, params) -> (updates, state)`` indexed by theta.

  Subclasses are frozen configurations (their constructor arguments are the architecture); all
  that is learned is ``theta``. ``config()`` returns the constructor arguments (JSON-able), so that
  ``OPTIMIZERS[name](**config)`` rebuilds the same architecture.
  """

  name: ClassVar[str]

  @abc.abstractmethod
  def init_theta(self, key: jax.Array) -> PyTree:
    """Initial meta-parameters (a pytree of float32 arrays); ``key``: a typed key or a raw
    ``uint32[2]`` one (:func:`lopt_meta.prng.as_typed_key`), the same seed giving the same theta."""

  @abc.abstractmethod
  def init(self, params: PyTree, *, num_steps: int | jax.Array | None = None) -> PyTree:
    """The inner optimizer state for ``params``; independent of theta. ``num_steps``: the
    number of steps the run will take (``T``), for optimizers that condition on progress
    ``t / T``; the others ignore it."""

  @abc.abstractmethod
  def update(self, theta: PyTree, grads: PyTree, state: PyTree, params: PyTree, *,
             loss: jax.Array | None = None) -> tuple[PyTree, PyTree]:
    """One step: returns ``(updates, new_state)``; ``params + updates`` are the new parameters."""

  @abc.abstractmethod
  def config(self) -> dict[str, Any]:
    """The constructor arguments (JSON-able)."""

  def as_optax(self, theta: PyTree, *,
               num_steps: int | None = None) -> optax.GradientTransformationExtraArgs:
    """This optimizer with ``theta`` fixed, as an optax transformation.

    ``update(updates, state, params, loss=None)``: ``updates`` are the gradients; ``params`` is
    required (the learned optimizers read the parameters); ``loss`` is optional.
    ``num_steps``: the length of the training run, for optimizers that condition on progress.
    """
    def init_fn(params):
      return self.init(params, num_steps=num_steps)

    def update_fn(updates, state, params=None, **extra_args):
      if params is None:
        raise ValueError(f"{type(self).__name__}.update needs params (pass params=...)")
      return self.update(theta, updates, state, params, loss=extra_args.get("loss"))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)

  def __repr__(self):
    args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
    return f"{type(self).__name__}({args})"
