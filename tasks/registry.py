"""The task registry: one dict from a name to what building it gives, of one of three kinds.

* ``"system"``: an :class:`~tasks.base.UnrolledSystem` whose theta is meta-trained directly (the
  papers' dynamical systems, policy learning, hyperparameter optimization);
* ``"inner"``: an :class:`~tasks.inner_task.InnerTask` that a learned optimizer trains (its theta
  is the optimizer's meta-parameters);
* ``"distribution"``: a :class:`~tasks.distribution.Distribution` of inner tasks.

A registered task is a factory of keyword-only options, whose return annotation names the kind
(each of the three classes declares its ``task_kind``), or a ready-made object of one of the
kinds (a ``Distribution``; its options are the overrides it takes). The package's own tasks are
registered in :mod:`tasks.catalog`, one line each; a user's task is one more call::

    @tasks.register("my_task")
    def my_task(*, width: int = 16) -> tasks.InnerTask:
      return MyTask(width)

>>> import tasks
>>> tasks.kind("lorenz"), tasks.kind("digits_mlp"), tasks.kind("digits_mix")
('system', 'inner', 'distribution')
>>> tasks.build("lorenz", horizon=500).horizon
500
"""

from __future__ import annotations

import functools
import inspect
import typing
from typing import Any, NamedTuple

from lopt_meta.errors import ConfigError, check_options, unknown_name

KINDS = ("system", "inner", "distribution")


class Registered(NamedTuple):
  """A registry entry: ``source`` is the factory (a function or a class) or the ready-made object,
  ``kind`` one of :data:`KINDS`."""
  source: Any
  kind: str


TASKS: dict[str, Registered] = {}


def _kind_of(name: str, source: Any) -> str:
  """The kind a registered source builds: a ready-made object's or a class's own ``task_kind``,
  or the ``task_kind`` of the class its factory's return annotation names."""
  if not callable(source) or isinstance(source, type):  # a ready-made object, or a class
    kind = getattr(source, "task_kind", None)
  else:
    factory = source.func if isinstance(source, functools.partial) else source
    try:
      returned = typing.get_type_hints(factory).get("return")
    except Exception:  # an annotation that does not resolve: told below
      returned = None
    kind = getattr(returned, "task_kind", None)
  if kind not in KINDS:
    raise ConfigError("task", f"cannot tell what {name!r} builds: annotate its factory's return "
                      "type with an UnrolledSystem, an InnerTask or a Distribution (or a "
                      f"subclass), or pass kind= (one of: {', '.join(KINDS)})")
  return kind


def register(name: str, source: Any = None, *, kind: str | None = None,
             overwrite: bool = False):
  """Registers ``source`` under ``name``: a factory of keyword-only options returning an
  ``UnrolledSystem``, an ``InnerTask`` or a ``Distribution`` (its return annotation, or
  ``kind``, says which), or a ``Distribution`` itself. Without ``source``, a decorator of the
  factory.

  Raises:
    ConfigError(task): ``name`` is taken (unless ``overwrite``), or the kind cannot be told.
  """
  if source is None:
    return lambda factory: register(name, factory, kind=kind, overwrite=overwrite)
  if kind is not None and kind not in KINDS:
    raise unknown_name("kind", kind, KINDS)
  if name in TASKS and not overwrite:
    raise ConfigError("task", f"{name!r} is already registered; pass overwrite=True to replace it")
  TASKS[name] = Registered(source, kind or _kind_of(name, source))
  return source


def _entry(name: str) -> Registered:
  if name not in TASKS:
    raise unknown_name("task", name, TASKS)
  return TASKS[name]


def kind(name: str) -> str:
  """What building task ``name`` gives: ``"system"``, ``"inner"`` or ``"distribution"``."""
  return _entry(name).kind


def names(of_kind: str | None = None) -> list[str]:
  """The registered names, sorted; those of one kind with ``of_kind``."""
  return sorted(n for n, e in TASKS.items() if of_kind is None or e.kind == of_kind)


def options(name: str) -> list[str]:
  """The options task ``name`` takes: its factory's keyword arguments, or a ready-made
  distribution's overrides."""
  source = _entry(name).source
  if callable(source):
    return list(inspect.signature(source).parameters)
  return list(source.OVERRIDES)


def build(name: str, **options_) -> Any:
  """Builds task ``name`` with ``options_``: an UnrolledSystem, an InnerTask or a Distribution.

  Raises:
    ConfigError: an unknown name (the message lists the registered names) or an option the task
      does not take (the message lists the ones it does).
  """
  source = _entry(name).source
  check_options("task", name, options_, options(name))
  if callable(source):
    return source(**options_)
  return source.with_options(**options_)


def get(name: str, **options_) -> Any:
  """The registered unrolled system ``name`` with ``options_`` (:func:`build` for a task of kind
  ``"system"``).

  Raises:
    ConfigError(task): ``name`` is not a registered unrolled system.
  """
  if kind(name) != "system":
    raise ConfigError("task", f"{name!r} is {_KIND_WORDS[kind(name)]}, not an unrolled system; "
                      f"unrolled systems: {', '.join(names('system'))}")
  return build(name, **options_)


_KIND_WORDS = {"system": "an unrolled system", "inner": "an inner task for a learned optimizer",
               "distribution": "a task distribution"}

