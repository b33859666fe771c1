"""The error types shared by every package of lopt-meta: bad configuration, unreadable checkpoints.

A :class:`ConfigError` is raised before any compute is spent, names the offending field and, where
there is a closed set, the allowed values. The ``meta-train`` command turns it into a one-line message
and exit status 2.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
  """A configuration value is invalid.

  Attributes:
    field: the name of the offending field, as the user spelled it (e.g. ``num_particles``).
  """

  def __init__(self, field: str, message: str):
    self.field = field
    super().__init__(f"{field}: {message}")


def check_positive_int(field: str, value: Any, meaning: str | None = None) -> int:
  """``int(value)`` if ``value`` is an integer >= 1 (a Python or NumPy integer, not a bool); else
  a ConfigError naming ``field``: ``must be a positive int (meaning); got value``."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
    what = f" ({meaning})" if meaning else ""
    raise ConfigError(field, f"must be a positive int{what}; got {value!r}")
  return int(value)


def unknown_name(field: str, name: object, valid: Iterable[str]) -> ConfigError:
  """The error for a name that is not in a registry; lists the valid names, sorted."""
  return ConfigError(field, f"unknown {field} {name!r}; valid: {', '.join(sorted(valid))}")


def check_options(kind: str, name: str, options: Iterable[str], allowed: Iterable[str]) -> None:
  """Raises a ConfigError, named after the first option of ``options`` that is not ``allowed``,
  saying which options ``kind`` ``name`` takes (e.g. ``task 'toy2d' takes no option 'horizn'``)."""
  allowed = list(allowed)
  for key in options:
    if key not in allowed:
      raise ConfigError(key, f"{kind} {name!r} takes no option {key!r}; valid: {', '.join(allowed)}")


def build_named(field: str, registry: Mapping[str, Callable[..., T]], name: str,
                options: dict[str, Any]) -> T:
  """``registry[name](**options)``, after the checks every registry of lopt-meta makes: an
  unknown ``name`` raises :func:`unknown_name` (the registered names), an option the factory
  does not take raises :func:`check_options` (the ones it takes); both name ``field``."""
  if name not in registry:
    raise unknown_name(field, name, registry)
  factory = registry[name]
  check_options(field, name, options, inspect.signature(factory).parameters)
  return factory(**options)
