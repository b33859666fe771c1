"""The three ways a learned optimizer's per-parameter MLP runs, as a pytest fixture.

* ``kernel``: the fused CPU kernel (skipped where no C++ compiler built it);
* ``plain``: ``LOPT_META_KERNELS=0`` on the CPU: plain JAX, particles with their own weights
  looped (``jax.lax.platform_dependent``'s ``cpu`` branch);
* ``accelerator``: what GPU and TPU run (:func:`lopt_meta.kernels.simulate_accelerator`): plain
  JAX and the ``default`` branch of every platform choice, executed here on the CPU.

Each choice acts when a function is traced: tests build fresh functions inside the fixture.
"""

from __future__ import annotations

import pytest

from lopt_meta import kernels

PATHS = ("kernel", "plain", "accelerator")


@pytest.fixture(params=PATHS)
def kernel_path(request, monkeypatch):
  """Runs the test on one path (see the module docstring); yields its name."""
  if request.param == "kernel":
    if not kernels.available():
      pytest.skip("the fused CPU kernel is unavailable here (no C++ compiler or a failed build)")
    yield "kernel"
  elif request.param == "plain":
    monkeypatch.setenv("LOPT_META_KERNELS", "0")
    assert not kernels.available()
    yield "plain"
  else:
    with kernels.simulate_accelerator():
      assert not kernels.available()
      yield "accelerator"
