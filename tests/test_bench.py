"""The held-out benchmark (meta-train bench) and the pretrained optimizers in the package.

The quick tier (``-m "not slow"``) keeps a bench row (every baseline tuned; Adam at a rate of its
grid reproduces that grid point exactly) and the command with stored baselines (its JSON line, read
back); the ``slow`` tests add the command over two seeds (the table, the spreads, ``--results``
and the plot) and Adam at the suite's one-rate row's rate, benched three times over."""

import json
import math
import subprocess
import sys
from importlib import resources

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt_meta
import tasks
from lopt_meta.errors import ConfigError
from meta_train.command import bench, cli
from tasks import heldout

TINY = heldout.HeldOutTask("breast_cancer_tiny", "image_mlp",
                           {"dataset": "breast_cancer", "hidden_sizes": (16,), "batch_size": 32},
                           100)


def test_suite_tasks_are_in_no_training_distribution():
  trained = set()
  for dist in map(tasks.build, tasks.names("distribution")):
    trained |= {(m.task, tuple(sorted(m.options.items()))) for m in dist.members}
  for held in heldout.SUITE:
    assert (held.task, tuple(sorted(held.options.items()))) not in trained
    assert held.steps >= 1000  # at least 2x the training horizons of its kind
  assert len({t.name for t in heldout.SUITE}) == len(heldout.SUITE) >= 5


def test_bench_row_tunes_every_baseline_and_compares_on_common_random_numbers():
  """Adam at a rate of its own grid reproduces that grid point exactly (same initialization,
  same batches), so at tuned Adam's rate the optimizer is 1.0x Adam and reaches its loss; every
  grid is at least 7 log-spaced points whose best lies inside it."""
  rates = bench._grid(*bench.GRIDS["adam"])
  assert len(rates) == 7 and np.allclose(np.diff(np.log10(rates)), 0.5)
  task = TINY.build()
  tuned = bench.tune(task, "adam", TINY.steps)
  best = float(tuned["rates"][tuned["best"]])
  _, optimizer, arg = bench.resolve_optimizer(f"adam:{best!r}")
  row = bench.bench_task(TINY, optimizer, arg)
  assert row["adam"]["lr"] == pytest.approx(best)
  assert row["vs_adam"] == 1.0 and row["train"] == row["adam"]["train"]
  assert row["steps_to_adam"] is not None and row["steps_to_adam"] <= TINY.steps
  for family in bench.BASELINES:
    grid = [float(r) for r in row[family]["grid"]]
    lr = row[family]["lr"]
    assert len(grid) >= 7
    assert min(grid) < lr < max(grid) or not (
        bench.LIMITS[0] + 0.5 < math.log10(lr) < bench.LIMITS[1] - 0.5)
  assert set(row["curves"]) >= {"optimizer"} and not row["diverged"]


def test_a_grid_whose_best_is_on_its_edge_is_widened(monkeypatch):
  monkeypatch.setitem(bench.GRIDS, "sgdm", (-5.0, -2.0))  # far too small rates for this task
  tuned = bench.tune(TINY.build(), "sgdm", TINY.steps)
  assert max(tuned["rates"]) > 10 ** -2 + 1e-9  # extended past the top edge
  assert tuned["best"] < len(tuned["rates"]) - 1  # and the best is now inside


def test_a_diverging_run_is_flagged_and_never_best():
  runs = bench.train_runs(TINY.build(), bench._OptaxAtRate(lambda lr, steps: optax.sgd(lr)),
                          jnp.asarray([1e-2, 1e4], jnp.float32), TINY.steps)
  assert list(runs.diverged) == [False, True]


@pytest.mark.slow  # quick: test_stored_baselines_are_reused_exactly (the command, one seed)
def test_bench_command_prints_a_table_and_a_json_line(tmp_path, capsys, monkeypatch):
  """Two seeds: one row per task and seed (different initializations, different losses), the
  JSON line's geometric means are the means of the per-seed ones with their min and max, and
  --results writes the same result to a file."""
  monkeypatch.setattr(heldout, "suite", lambda names=None, steps_scale=1.0: (TINY,))
  results = tmp_path / "bench" / "r.json"
  assert cli.main(["bench", "sgdm:0.05", "--seeds", "2", "--out", str(tmp_path / "b.png"),
                   "--results", str(results)]) == 0
  out = capsys.readouterr().out.strip().splitlines()
  assert out[0].split()[:3] == ["task", "seed", "steps"]
  result = json.loads(out[-1])
  assert result["optimizer"] == "sgdm lr 0.05" and result["tasks"] == 1 and result["seeds"] == 2
  assert [r["seed"] for r in result["rows"]] == [0, 1]
  assert result["rows"][0]["train"] != result["rows"][1]["train"]
  for key in bench.SPREAD_KEYS:
    per_seed = [s[key] for s in result["per_seed"]]
    assert all(math.isfinite(v) for v in per_seed)
    assert result[key] == pytest.approx(np.mean(per_seed), rel=1e-12)
    assert result[key + "_spread"] == [min(per_seed), max(per_seed)]
  assert json.loads(results.read_text())["summary"]["vs_adam_geomean"] == result["vs_adam_geomean"]
  assert (tmp_path / "b.png").stat().st_size > 0


@pytest.mark.slow  # quick: the bench row at a rate of its grid (above)
def test_adam_at_the_one_rate_for_the_suite_is_that_row_exactly():
  """Bench Adam at the rate that the one-rate row picks: its runs are that row's runs (same
  initialization and batches), so it is exactly 1.0x the row and its ratio to tuned Adam is the
  row's; the row's rate is the base-grid rate with the lowest final loss (one task)."""
  first = bench.summary([bench.bench_task(TINY, *bench.resolve_optimizer("adam")[1:])], "adam")
  row = first["adam_one_rate"]
  base = {f"{r:.3g}": r for r in bench._grid(*bench.GRIDS["adam"])}
  tuned = bench.bench_task(TINY, *bench.resolve_optimizer("adam")[1:])["adam"]
  finite = {k: tuned["grid"][k] for k in base if not tuned["diverged"][k]}
  assert row["lr"] == base[min(finite, key=finite.get)]
  at_rate = bench.summary([bench.bench_task(
      TINY, *bench.resolve_optimizer(f"adam:{row['lr']!r}")[1:])], "adam")
  assert at_rate["vs_adam_one_rate_geomean"] == 1.0
  assert at_rate["vs_adam_geomean"] == pytest.approx(row["vs_adam"], rel=1e-6)


def test_warmup_cosine_is_optax_schedule():
  """adam_wc's schedule (written to take a traced rate) has optax's values."""
  ours = bench.warmup_cosine(3e-3, 200)
  theirs = optax.warmup_cosine_decay_schedule(0.0, 3e-3, warmup_steps=10, decay_steps=200,
                                              end_value=0.0)
  steps = np.arange(0, 220)
  np.testing.assert_allclose([float(ours(t)) for t in steps], [float(theirs(t)) for t in steps],
                             rtol=1e-5, atol=1e-10)


def test_bad_bench_input_is_one_clear_error(capsys):
  assert cli.main(["bench", "rmsprop"]) == 2
  assert capsys.readouterr().err.startswith(
      "meta-train: error: optimizer: 'rmsprop' is not a .npz file, a pretrained optimizer")
  assert cli.main(["bench", "adam", "--tasks", "mnist"]) == 2
  assert capsys.readouterr().err.startswith(
      "meta-train: error: tasks: unknown held-out task 'mnist'; valid: fmnist28_mlp_128x128")
  with pytest.raises(ConfigError, match="^name: unknown pretrained optimizer 'velo'"):
    lopt_meta.load_pretrained("velo")


def test_every_pretrained_optimizer_ships_with_its_recipe():
  folder = resources.files("lopt_meta") / "pretrained"
  assert lopt_meta.PRETRAINED and lopt_meta.pretrained.DEFAULT in lopt_meta.PRETRAINED
  for name in lopt_meta.PRETRAINED:
    assert (folder / f"{name}.npz").is_file() and (folder / f"{name}.yaml").is_file()
    lopt, theta, metadata = lopt_meta.read_pretrained(name)
    from meta_train.command import build as build_lib
    from meta_train.command import config as config_lib
    config = config_lib.TrainConfig.from_file(lopt_meta.pretrained.recipe(name))
    assert metadata["task"] == config.task.task  # produced by its recipe's distribution training
    assert config.task.is_distribution and config.task.lopt == lopt.name
    assert build_lib.build_lopt(config).config() == lopt.config()  # the recipe's optimizer


LOAD_OFFLINE = """
import socket
def refuse(*args, **kwargs):
    raise OSError("no network in this test")
socket.socket.connect = refuse
socket.create_connection = refuse
import jax, jax.numpy as jnp, optax, lopt_meta
tx = optax.chain(optax.clip_by_global_norm(1.0), lopt_meta.load_pretrained())
params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
state = tx.init(params)
grads = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)
updates, state = jax.jit(tx.update)(grads, state, params, loss=jnp.float32(1.0))
lopt, theta, _ = lopt_meta.read_pretrained()
direct, _ = lopt.update(theta, grads, lopt.init(params), params, loss=jnp.float32(1.0))
same = all(bool(jnp.allclose(a, b)) for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(direct)))
finite = all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
print(same, finite, sorted(lopt_meta.PRETRAINED))
"""


def test_load_pretrained_works_offline_in_a_fresh_interpreter():
  out = subprocess.run([sys.executable, "-c", LOAD_OFFLINE], capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split("\n")[-2] == f"True True {sorted(lopt_meta.PRETRAINED)}"


def test_stored_baselines_are_reused_exactly(tmp_path, capsys, monkeypatch):
  """--baselines FILE: the first bench tunes and stores; the second reads them back (tuning
  nothing) and prints the same result."""
  monkeypatch.setattr(heldout, "suite", lambda names=None, steps_scale=1.0: (TINY,))
  stored = tmp_path / "baselines.json"
  assert cli.main(["bench", "sgdm:0.05", "--baselines", str(stored)]) == 0
  first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert stored.is_file()

  def no_tuning(*args, **kwargs):
    raise AssertionError("tuned again")
  monkeypatch.setattr(bench, "tune", no_tuning)
  assert cli.main(["bench", "sgdm:0.05", "--baselines", str(stored)]) == 0
  second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  for a, b in zip(first["rows"], second["rows"]):
    a.pop("seconds"), b.pop("seconds")
    assert a == b
