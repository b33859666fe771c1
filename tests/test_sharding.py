"""Several devices: 4 simulated CPU devices give the same estimates as one."""

import os
import subprocess
import sys
import textwrap

import jax
import pytest

from meta_train.engine import sharding
from tests import optional

SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    import jax, numpy as np, lopt_meta, tasks
    from meta_train.estimators import NRES, PES, FullES, TBPTT, OverTasks

    def flat(tree):
        return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])

    lorenz = tasks.get("lorenz", horizon=60, init_sigma=0.5)
    lopt = tasks.learned_optimizer_system(tasks.build("digits_mlp"), lopt_meta.MLPLOpt(),
                                          horizon=30)
    cases = {
        "nres_lorenz": (lorenz, lambda d: NRES(lorenz, num_particles=16, sigma=0.04, unroll_length=10, devices=d)),
        "pes_lorenz": (lorenz, lambda d: PES(lorenz, num_particles=16, sigma=0.04, unroll_length=10, devices=d)),
        "full_es_lorenz": (lorenz, lambda d: FullES(lorenz, num_particles=16, sigma=0.04, devices=d)),
        "tbptt_lorenz": (lorenz, lambda d: TBPTT(lorenz, num_particles=8, unroll_length=10, devices=d)),
        "nres_lopt": (lopt, lambda d: NRES(lopt, num_particles=8, sigma=0.01, unroll_length=5, devices=d)),
    }
    conv = tasks.learned_optimizer_system(tasks.build(
        "image_conv", dataset="digits", channels=(4,), batch_size=16), lopt_meta.MLPLOpt(), horizon=20)
    cases["over_tasks_lopt"] = (lopt, lambda d: OverTasks(  # an MLP and a CNN, both drawn
        {"mlp": NRES(lopt, num_particles=8, sigma=0.01, unroll_length=5, devices=d),
         "conv": NRES(conv, num_particles=8, sigma=0.01, unroll_length=5, devices=d)},
        tasks_per_step=2))
    try:  # the MuJoCo host callback, once per step per device (the RL extra is installed in CI)
        swimmer = tasks.get("swimmer", horizon=20)
        cases["nres_swimmer"] = (swimmer, lambda d: NRES(swimmer, num_particles=8, sigma=0.3, unroll_length=5, devices=d))
        cases["full_es_swimmer"] = (swimmer, lambda d: FullES(swimmer, num_particles=8, sigma=0.3, devices=d))
    except lopt_meta.ConfigError:
        pass
    cases = {name: case for name, case in cases.items() if name in sys.argv[1:]}
    out = {"devices": len(jax.devices())}
    for name, (system, make) in cases.items():
        many, one = make(None), make(jax.devices()[:1])
        w_many, w_one = many.init(jax.random.key(0), system.theta0), one.init(jax.random.key(0), system.theta0)
        for i in range(3):
            g_many, w_many, _ = many.estimate(jax.random.key(i), system.theta0, w_many)
            g_one, w_one, _ = one.estimate(jax.random.key(i), system.theta0, w_one)
        a, b = flat(g_many), flat(g_one)
        workers = getattr(w_many, "members", (w_many,))[-1]  # a distribution: its last member
        shards = None if workers is None else len(workers.t.sharding.device_set)
        out[name] = {"rel_diff": float(np.max(np.abs(a - b)) / np.max(np.abs(b))), "shards": shards}
    print(json.dumps(out))
""")


# Each estimator's sharded path and the MuJoCo host callback (once per step per device) in the
# quick tier; PES (NRES's window path), a learned optimizer (NRES's path on larger states, about
# as much compilation as the quick cases together), a task distribution (its members' NRES) and
# FullES on MuJoCo are slow.
CASES = {"quick": ["nres_lorenz", "full_es_lorenz", "tbptt_lorenz", "nres_swimmer"],
         "slow": ["pes_lorenz", "nres_lopt", "over_tasks_lopt", "full_es_swimmer"]}
MUJOCO_CASES = {"nres_swimmer", "full_es_swimmer"}


@pytest.mark.parametrize("group", ["quick", pytest.param("slow", marks=pytest.mark.slow)])
def test_four_devices_give_the_single_device_estimate(group):
  """Every case's estimate on 4 devices is the single-device one; the MuJoCo cases (the host
  callback) run where the rl extra is installed: without it the test checks the other cases and
  then skips (fails under CI, see tests/optional.py)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")  # XLA_FLAGS (see conftest) pass on
  result = subprocess.run([sys.executable, "-c", SCRIPT, *CASES[group]], env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  import json
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["devices"] == 4
  for name, r in out.items():
    if name == "devices":
      continue
    assert r["rel_diff"] < 1e-4, (name, r)  # the same estimate up to float summation order
    # Worker state split over the 4 devices; FullES keeps none between estimates.
    assert r["shards"] == (None if name.startswith("full_es") else 4), (name, r)
  assert set(CASES[group]) - MUJOCO_CASES <= set(out) <= {"devices", *CASES[group]}
  optional.require_mujoco()
  assert set(CASES[group]) <= set(out)


def test_pairs_that_do_not_split_evenly_are_rejected():
  devices = [jax.devices()[0]] * 4  # the check only counts devices
  with pytest.raises(ValueError, match=r"^num_particles: 6 particles \(3 pairs\) cannot be split "
                     r"evenly over 4 devices; use a multiple of 8$"):
    sharding.pairs_mesh(3, devices)
  assert sharding.pairs_mesh(3, devices[:1]) is None
