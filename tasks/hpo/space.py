"""The declaration of a hyperparameter space: transforms from unconstrained theta.

ES-Single paper, section 4.2 and appendix C (https://arxiv.org/abs/2304.12180). A declaration maps
each hyperparameter's name to a transform, which says how an unconstrained real ``u = theta[name]``
becomes the hyperparameter and from which range the initial value is drawn::

    space = {"lr": LogUniform(1e-4, 1e-2),      # exp(u); u uniform in (ln 1e-4, ln 1e-2)
             "momentum": Logit(0.01, 0.9),      # sigmoid(u); u uniform in (logit 0.01, logit 0.9)
             "width_1": Fraction(0.2, 0.8)}     # sigmoid(u): the fraction of a layer's units kept

:func:`constrain` maps a theta to the hyperparameters (what ``meta-train export`` writes),
:func:`sample` draws initial values; the systems that train with them are in
:mod:`tasks.hpo.systems`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from lopt_meta.errors import ConfigError

Space = Mapping[str, "Transform"]


# ---------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Transform:
  """A hyperparameter's map from the unconstrained ``u`` and its initial range ``(low, high)``
  in the hyperparameter's own (constrained) units."""
  low: float
  high: float

  def forward(self, u: jax.Array) -> jax.Array:
    """The hyperparameter for the unconstrained value ``u`` (any shape)."""
    raise NotImplementedError

  def inverse(self, x):
    """The unconstrained value of hyperparameter ``x`` (``forward``'s inverse)."""
    raise NotImplementedError

  def problem(self) -> str | None:
    """Why the range is invalid, or ``None``."""
    if not (isinstance(self.low, (int, float)) and isinstance(self.high, (int, float))
            and math.isfinite(self.low) and math.isfinite(self.high)):
      return f"needs finite numbers low, high; got low={self.low!r}, high={self.high!r}"
    if not self.low < self.high:
      return f"needs low < high; got low={self.low!r}, high={self.high!r}"
    return None

  @property
  def bounds(self) -> tuple[float, float]:
    """The initial range in unconstrained units: ``(inverse(low), inverse(high))``."""
    return float(self.inverse(self.low)), float(self.inverse(self.high))


@dataclasses.dataclass(frozen=True)
class Uniform(Transform):
  """The identity: the hyperparameter is ``u``, drawn uniformly in ``(low, high)``."""

  def forward(self, u):
    return u

  def inverse(self, x):
    return x


@dataclasses.dataclass(frozen=True)
class LogUniform(Transform):
  """``exp(u)``, for positive scales (learning rates); drawn log-uniformly in ``(low, high)``."""

  def forward(self, u):
    return jnp.exp(u)

  def inverse(self, x):
    return math.log(x) if isinstance(x, (int, float)) else jnp.log(x)

  def problem(self):
    if (problem := super().problem()) is not None:
      return problem
    if self.low <= 0:
      return f"is a log scale and needs 0 < low < high; got low={self.low!r}, high={self.high!r}"
    return None


@dataclasses.dataclass(frozen=True)
class Logit(Transform):
  """``sigmoid(u)``, for values in (0, 1) (momenta); drawn uniformly in logit space between
  ``logit(low)`` and ``logit(high)``."""

  def forward(self, u):
    return jax.nn.sigmoid(u)

  def inverse(self, x):
    if isinstance(x, (int, float)):
      return math.log(x) - math.log1p(-x)
    return jnp.log(x) - jnp.log1p(-x)

  def problem(self):
    if (problem := super().problem()) is not None:
      return problem
    if not (0 < self.low and self.high < 1):
      return f"maps to (0, 1) and needs 0 < low < high < 1; got low={self.low!r}, high={self.high!r}"
    return None


@dataclasses.dataclass(frozen=True)
class Fraction(Logit):
  """``sigmoid(u)``: the fraction of a layer's units that nested dropout keeps
  (:func:`units_kept`); drawn uniformly in logit space between ``logit(low)`` and ``logit(high)``."""


def units_kept(fraction: jax.Array, max_units: int) -> jax.Array:
  """``round(fraction * max_units)`` clipped to ``[1, max_units]`` (int32): the number of units
  a layer of ``max_units`` keeps (rounding half to even, as Python's ``round``)."""
  kept = jnp.round(jnp.asarray(fraction, jnp.float32) * max_units)
  return jnp.clip(kept, 1, max_units).astype(jnp.int32)


def nested_dropout_mask(fraction: jax.Array, max_units: int) -> jax.Array:
  """``float32 [max_units]``: 1 for the first :func:`units_kept` units, 0 past them (nested
  dropout with a deterministic cut: the layer behaves as one of that width)."""
  return (jnp.arange(max_units) < units_kept(fraction, max_units)).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# Spaces
# ---------------------------------------------------------------------------------------------

def check_space(space: Space) -> None:
  """Raises ConfigError for an empty declaration, a name that is not a non-empty string, an
  entry that is not a transform, or a bad range (the error names the hyperparameter)."""
  if not isinstance(space, Mapping) or not space:
    raise ConfigError("space", "declare at least one hyperparameter, e.g. "
                      "{'lr': LogUniform(1e-4, 1e-2)}")
  for name, transform in space.items():
    if not isinstance(name, str) or not name:
      raise ConfigError("space", f"hyperparameter names are non-empty strings; got {name!r}")
    if not isinstance(transform, Transform):
      raise ConfigError(name, "must be a transform (Uniform, LogUniform, Logit or Fraction); "
                        f"got {type(transform).__name__}")
    if (problem := transform.problem()) is not None:
      raise ConfigError(name, f"{type(transform).__name__} {problem}")


def _check_names(field: str, space: Space, values: Mapping[str, Any]) -> None:
  if not isinstance(values, Mapping):
    raise ConfigError(field, f"must be a dict of hyperparameters; got {type(values).__name__}")
  for name in values:
    if name not in space:
      raise ConfigError(field, f"unknown hyperparameter {name!r}; declared: {', '.join(space)}")
  missing = [name for name in space if name not in values]
  if missing:
    raise ConfigError(field, f"missing hyperparameter(s) {', '.join(map(repr, missing))}; "
                      f"declared: {', '.join(space)}")


def constrain(space: Space, theta: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """The hyperparameters ``{name: transform.forward(theta[name])}`` (traceable)."""
  _check_names("theta", space, theta)
  return {name: space[name].forward(theta[name]) for name in space}


def unconstrain(space: Space, hparams: Mapping[str, Any], *,
                field: str = "hparams") -> dict[str, jax.Array]:
  """theta for the hyperparameters ``hparams`` (float32 scalars): :func:`constrain`'s inverse
  (errors name ``field``)."""
  check_space(space)
  _check_names(field, space, hparams)
  return {name: jnp.float32(space[name].inverse(hparams[name])) for name in space}


def centre(space: Space) -> dict[str, jax.Array]:
  """theta at the middle of every initial range, in unconstrained units (float32 scalars)."""
  check_space(space)
  return {name: jnp.float32(sum(t.bounds) / 2) for name, t in space.items()}


def sample(space: Space, key: jax.Array) -> dict[str, jax.Array]:
  """theta drawn uniformly from the initial ranges in unconstrained units (float32 scalars; one
  independent key per name, in declaration order)."""
  check_space(space)
  keys = jax.random.split(key, len(space))
  return {name: jax.random.uniform(k, (), jnp.float32, *t.bounds)
          for k, (name, t) in zip(keys, space.items())}


def initial_theta(space: Space, theta0: Mapping[str, float] | None = None,
                  init_seed: int | None = None) -> dict[str, jax.Array]:
  """theta to start from: ``theta0`` (hyperparameter values, constrained) if given, else a draw
  from the initial ranges with ``init_seed``, else the ranges' centre."""
  check_space(space)
  if theta0 is not None and init_seed is not None:
    raise ConfigError("init_seed", "give theta0 (the starting hyperparameters) or init_seed "
                      "(draw them), not both")
  if theta0 is not None:
    return unconstrain(space, theta0, field="theta0")
  if init_seed is not None:
    if isinstance(init_seed, bool) or not isinstance(init_seed, int):
      raise ConfigError("init_seed", f"must be an int; got {init_seed!r}")
    return sample(space, jax.random.key(init_seed))
  return centre(space)


TRANSFORMS = {"Uniform": Uniform, "LogUniform": LogUniform, "Logit": Logit, "Fraction": Fraction}


def space_to_dict(space: Space) -> dict[str, dict[str, Any]]:
  """``{name: {"kind": CLASS, "low": ..., "high": ...}}``: a space as JSON (the inverse of
  :func:`space_from_dict`)."""
  return {k: {"kind": type(t).__name__, "low": t.low, "high": t.high} for k, t in space.items()}


def space_from_dict(d: Mapping[str, Mapping[str, Any]]) -> dict[str, Transform]:
  """The space :func:`space_to_dict` wrote."""
  return {k: TRANSFORMS[v["kind"]](low=v["low"], high=v["high"]) for k, v in d.items()}


def to_json(space: Space, theta: Mapping[str, Any], path: str | Path | None = None,
            **metadata) -> dict[str, Any]:
  """``{"hyperparameters": {name: float}, "theta": {name: float}, **metadata}``: the tuned
  hyperparameters (constrained) and theta; written to ``path`` as JSON if given."""
  hparams = constrain(space, theta)
  out = {"hyperparameters": {k: float(v) for k, v in hparams.items()},
         "theta": {k: float(theta[k]) for k in space},
         "transforms": space_to_dict(space),
         **metadata}
  if path is not None:
    Path(path).write_text(json.dumps(out, indent=2) + "\n")
  return out
