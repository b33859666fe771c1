"""The rule for tests that need an optional part (tests/optional.py): skipped where it is missing,
with the reason and the install line; failed, with the same message, under CI."""

import re
import sys

import pytest

from tasks import data
from tests import optional

FASHION_MESSAGE = ("FashionMNIST is not installed here ({path} does not exist); install it with: "
                   "sudo apt-get install dataset-fashion-mnist")
MUJOCO_MESSAGE = ("MuJoCo (the rl extra) is not installed here (mujoco: import of mujoco halted; "
                  "None in sys.modules); install it with: pip install -e '.[rl]'")


@pytest.fixture
def no_fashion_mnist(tmp_path, monkeypatch):
  absent = tmp_path / "absent"
  monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", absent)
  return FASHION_MESSAGE.format(path=absent)


@pytest.fixture
def no_mujoco(monkeypatch):
  """``sys.modules[name] = None`` is what a missing package looks like to ``import``."""
  monkeypatch.setitem(sys.modules, "mujoco", None)
  return MUJOCO_MESSAGE


def _exactly(message):
  return f"^{re.escape(message)}$"


def test_a_missing_part_skips_outside_ci(no_fashion_mnist, no_mujoco, monkeypatch):
  monkeypatch.delenv("CI", raising=False)
  for require, message in ((optional.require_fashion_mnist, no_fashion_mnist),
                           (optional.require_mujoco, no_mujoco),
                           (lambda: optional.require_parts_of("fashion_mnist_mlp/adam"),
                            no_fashion_mnist),
                           (lambda: optional.require_parts_of("swimmer"), no_mujoco)):
    with pytest.raises(pytest.skip.Exception, match=_exactly(message)):
      require()
  assert optional.import_mujoco() is None


@pytest.mark.parametrize("ci", ["1", "true"])
def test_a_missing_part_fails_under_ci(no_fashion_mnist, no_mujoco, monkeypatch, ci):
  monkeypatch.setenv("CI", ci)
  suffix = f" (CI={ci}: .ci/run installs it, so the setup is broken)"
  with pytest.raises(pytest.fail.Exception, match=_exactly(no_fashion_mnist + suffix)):
    optional.require_fashion_mnist()
  with pytest.raises(pytest.fail.Exception, match=_exactly(no_mujoco + suffix)):
    optional.require_mujoco()
  with pytest.raises(pytest.fail.Exception, match=_exactly(no_mujoco + suffix)):
    optional.require_parts_of("halfcheetah")


def test_an_empty_ci_variable_is_not_ci(no_fashion_mnist, monkeypatch):
  monkeypatch.setenv("CI", "")
  assert not optional.in_ci()
  with pytest.raises(pytest.skip.Exception, match=_exactly(no_fashion_mnist)):
    optional.require_fashion_mnist()


@pytest.mark.parametrize("ci", [None, "1"])
def test_a_present_part_neither_skips_nor_fails(tmp_path, monkeypatch, ci):
  if ci is None:
    monkeypatch.delenv("CI", raising=False)
  else:
    monkeypatch.setenv("CI", ci)
  monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path)
  assert optional.fashion_mnist_missing() is None
  assert optional.require_fashion_mnist() is None
  assert optional.require_parts_of("fashion_mnist_mlp28") is None


def test_each_name_needs_its_parts(no_fashion_mnist, no_mujoco):
  """FashionMNIST for the fashion_mnist tasks (alone or with a learned optimizer) and the
  distributions with a member on it, MuJoCo for the policy-learning tasks, nothing for the
  others."""
  assert optional.missing_parts_of("fashion_mnist_mlp") == [no_fashion_mnist]
  assert optional.missing_parts_of("fashion_mnist_mlp28/adafac") == [no_fashion_mnist]
  assert optional.missing_parts_of("small_mix") == [no_fashion_mnist]
  for name in ("swimmer", "halfcheetah", "hopper", "walker2d"):
    assert optional.missing_parts_of(name) == [no_mujoco]
  for name in ("digits_mlp", "digits_mlp/adam", "lorenz", "cifar10_resnet/mlp", "digits_mix"):
    assert optional.missing_parts_of(name) == []
