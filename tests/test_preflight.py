"""The pre-run check for batched LAPACK calls (jaxlib 0.10's CPU deadlock)."""

import tempfile
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import tasks
from meta_train.command import build as build_lib
from meta_train.command import preflight
from tests import optional
from tests.every_system import NAMES, configs

@pytest.mark.parametrize("name", NAMES)
def test_registered_systems_call_no_lapack(name):
  """No registered system (every task, every learned optimizer) can hit the deadlock: their
  vmapped init and step lower to no LAPACK call at all (cifar10_resnet: the full ResNet-8)."""
  optional.require_parts_of(name)
  with tempfile.TemporaryDirectory() as scratch:
    system = build_lib.build_system(configs(name, "nres", 2, Path(scratch), full_model=True))
    assert preflight.lapack_calls(system, num_pairs=2) == {"init": [], "step": []}


class _Recurrent(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.RNN(nn.LSTMCell(16))(x)  # Flax's default recurrent init: orthogonal, by QR


def _lstm_system():
  model = _Recurrent()
  return tasks.UnrolledSystem(
      init=lambda key: model.init(key, jnp.zeros((1, 3, 2)))["params"],
      step=lambda theta, s, key: (s, jnp.sum(theta ** 2)), horizon=5, theta0=jnp.zeros(2),
      name="my_lstm")


def test_a_vmapped_qr_is_found_and_warned_about():
  calls = preflight.lapack_calls(_lstm_system(), num_pairs=3)
  assert calls == {"init": ["lapack_sgeqrf_ffi", "lapack_sorgqr_ffi"], "step": []}
  warning = preflight.lapack_warning(_lstm_system(), num_pairs=3)
  if not preflight.affected():
    assert warning is None
    return
  assert warning == (
      "meta-train: WARNING: 'my_lstm' calls LAPACK in its vmapped init (lapack_sgeqrf_ffi, "
      f"lapack_sorgqr_ffi): jaxlib {jax.lib.__version__}'s batched CPU LAPACK kernels can deadlock "
      "(the run then never returns; SIGTERM still ends it). Compute these without LAPACK (e.g. "
      "tasks.initializers.orthogonal for recurrent kernels) or run on GPU/TPU.")
  assert preflight.lapack_warning(_lstm_system(), num_pairs=1) is None  # unbatched: safe
