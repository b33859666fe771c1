"""Task distributions: meta-training a learned optimizer over inner tasks of different structures.

A :class:`Distribution` declares its members (an inner task by registered name with options, and
the member's own horizon), the per-episode augmentations, the truncation schedule, and how the
outer step draws and combines members::

    dist = tasks.Distribution(members=(
        tasks.Member("image_mlp", {"dataset": "digits", "hidden_sizes": [32]}, horizon=500),
        tasks.Member("image_conv", {"dataset": "fashion_mnist", "image_size": 8}, horizon=300),
        tasks.Member("lstm_copy", {"max_length": 8}, horizon=200)),
        augment=tasks.Augmentation(param_scale=(1e-3, 1e3)), truncation="log_uniform")
    systems = dist.systems(lopt_meta.MLPLOpt(), theta0=theta0)   # {name: UnrolledSystem}

The same declaration in YAML, under ``task: {distribution: ...}`` of a ``--config`` file::

    members:
      - {task: image_mlp, dataset: digits, hidden_sizes: [32], horizon: 500}
      - {task: lstm_copy, max_length: 8, horizon: 200}
    augment: {param_scale: [0.001, 1000]}
    truncation: log_uniform

Ready-made ones are registered by name (``--task NAME``; :mod:`tasks.mixes`). Each member becomes an ordinary
learned-optimizer system (:func:`tasks.learned_optimizer_system`, on the inner-training core);
how members are drawn, estimated and combined is the estimator's business
(:class:`meta_train.estimators.OverTasks`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax

from lopt_meta.base import LearnedOptimizer
from lopt_meta.errors import ConfigError, check_positive_int
from tasks.base import UnrolledSystem
from tasks import registry
from tasks.inner_training import TRUNCATIONS, Augmentation
from tasks.lopt_system import learned_optimizer_system

NORMALIZATIONS = ("loss", "none")


@dataclasses.dataclass(frozen=True)
class Member:
  """One task of a distribution.

  Attributes:
    task: a registered inner task (``tasks.names("inner")``).
    options: its options (e.g. ``{"dataset": "digits", "hidden_sizes": [64, 64]}``).
    horizon: ``T`` of this member's episodes (the longest, under ``log_uniform`` truncation).
    name: the member's name in logs (default: the built task's own name).
  """
  task: str
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  horizon: int = 1000
  name: str | None = None

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> Member:
    """``{task: NAME, horizon: T, name: ..., OPTION: VALUE, ...}`` (the YAML form)."""
    if not isinstance(d, Mapping) or "task" not in d:
      raise ConfigError("members", f"each member is a mapping with a 'task'; got {d!r}")
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()
               if k not in ("task", "horizon", "name")}
    return cls(task=d["task"], options=options, horizon=d.get("horizon", 1000), name=d.get("name"))


@dataclasses.dataclass(frozen=True)
class Distribution:
  """A declared distribution of inner tasks (see the module docstring).

  Attributes:
    members: the tasks (at least one); their parameters may have any structures.
    augment: per-episode augmentations of every member's inner training.
    truncation: ``"constant"`` or ``"log_uniform"`` episode lengths (per member, in
      ``[horizon // 10, horizon]``).
    tasks_per_step: members drawn (without replacement) at each outer step.
    normalize: ``"loss"``: each member's estimate is weighted by the inverse of a running mean
      of its meta-loss, so that no task dominates by its loss scale; ``"none"``: as it is.
  """
  task_kind: ClassVar[str] = "distribution"  # what the task registry builds (tasks.registry)
  OVERRIDES: ClassVar[tuple[str, ...]] = ("tasks_per_step", "normalize", "truncation")

  members: tuple[Member, ...]
  augment: Augmentation = Augmentation()
  truncation: str = "constant"
  tasks_per_step: int = 1
  normalize: str = "loss"

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> Distribution:
    """The YAML form (see the module docstring); unknown keys are one ConfigError."""
    if not isinstance(d, Mapping):
      raise ConfigError("distribution", f"must be a mapping; got {type(d).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in d:
      if key not in fields:
        raise ConfigError(key, f"unknown distribution setting {key!r}; valid: "
                          f"{', '.join(sorted(fields))}")
    members = d.get("members")
    if not isinstance(members, (list, tuple)):
      raise ConfigError("members", "must be a list of tasks")
    augment = d.get("augment") or {}
    if not isinstance(augment, Mapping) or set(augment) - {"param_scale", "label_noise"}:
      raise ConfigError("augment", f"valid: param_scale, label_noise; got {augment!r}")
    augment = Augmentation(**{k: tuple(v) if isinstance(v, list) else v
                              for k, v in augment.items()})
    rest = {k: d[k] for k in ("truncation", "tasks_per_step", "normalize") if k in d}
    return cls(members=tuple(Member.from_dict(m) for m in members), augment=augment, **rest)

  def to_dict(self) -> dict[str, Any]:
    return {"members": [{"task": m.task, **{k: list(v) if isinstance(v, tuple) else v
                                            for k, v in m.options.items()},
                         "horizon": m.horizon, **({"name": m.name} if m.name else {})}
                        for m in self.members],
            "augment": {"param_scale": (list(self.augment.param_scale)
                                        if self.augment.param_scale else None),
                        "label_noise": self.augment.label_noise},
            "truncation": self.truncation, "tasks_per_step": self.tasks_per_step,
            "normalize": self.normalize}

  def check(self) -> None:
    """One ConfigError naming the field for a bad setting (before anything is built)."""
    if not self.members:
      raise ConfigError("members", "a distribution needs at least one task")
    for m in self.members:
      if m.task not in registry.names("inner"):
        raise ConfigError("members", f"unknown task {m.task!r}; valid: "
                          f"{', '.join(registry.names('inner'))}")
      check_positive_int("horizon", m.horizon, f"the horizon of member {m.task!r}")
    if self.truncation not in TRUNCATIONS:
      raise ConfigError("truncation", f"unknown truncation {self.truncation!r}; valid: "
                        f"{', '.join(TRUNCATIONS)}")
    check_positive_int("tasks_per_step", self.tasks_per_step)
    if self.tasks_per_step > len(self.members):
      raise ConfigError("tasks_per_step", f"must be at most the number of members "
                        f"({len(self.members)}); got {self.tasks_per_step}")
    if self.normalize not in NORMALIZATIONS:
      raise ConfigError("normalize", f"unknown normalize {self.normalize!r}; valid: "
                        f"{', '.join(NORMALIZATIONS)}")

  def with_options(self, **overrides) -> Distribution:
    """This distribution with ``overrides`` (of :attr:`OVERRIDES`), checked.

    Raises:
      ConfigError: an override it does not take, or a bad value (naming the field).
    """
    for name in overrides:
      if name not in self.OVERRIDES:
        raise ConfigError(name, f"a distribution takes {', '.join(self.OVERRIDES)}; got {name!r}")
    dist = dataclasses.replace(self, **overrides)
    dist.check()
    return dist

  def systems(self, lopt: LearnedOptimizer, *, theta0: Any = None, meta_loss: str = "train",
              truncation: str | None = None, data_dir: str | None = None,
              for_evaluation: bool = False) -> dict[str, UnrolledSystem]:
    """``{member name: learned-optimizer system}`` in declaration order.

    ``truncation`` overrides the declaration's; ``for_evaluation`` gives every episode the full
    horizon and no augmentation (the quantity compared with tuned baselines)."""
    self.check()
    truncation = truncation or self.truncation
    out: dict[str, UnrolledSystem] = {}
    for m in self.members:
      options = dict(m.options)
      if data_dir is not None and "data_dir" in registry.options(m.task):
        options.setdefault("data_dir", data_dir)
      task = registry.build(m.task, **options)
      name = m.name or task.name
      if name in out:
        raise ConfigError("members", f"two members are named {name!r}; give one a 'name'")
      out[name] = learned_optimizer_system(
          task, lopt, horizon=m.horizon, meta_loss=meta_loss,
          truncation="constant" if for_evaluation else truncation,
          augment=None if for_evaluation else self.augment,
          theta0=lopt.init_theta(jax.random.key(0)) if theta0 is None else theta0, name=name)
    return out


class DistributionSystem:
  """The members' systems as one object, as the trainer and a run read a system: ``systems``
  (``{name: UnrolledSystem}``), ``data`` (one entry per member, passed through ``jit`` as
  arguments), ``theta0`` (the first member's: every member's theta has its structure), ``name``
  and ``horizon`` (the longest)."""

  def __init__(self, systems: Mapping[str, Any], name: str):
    self.systems = dict(systems)
    self.name = name
    self.theta0 = next(iter(self.systems.values())).theta0
    self.data = tuple(s.data for s in self.systems.values())
    self.horizon = max(s.horizon for s in self.systems.values())
    self.loss_is_negative_reward = False
    self.space = None
