"""Meta-validation during a run (the best theta kept as best.npz) and ``--init-from``.

The quick tier (``-m "not slow"``) keeps a meta-validated run (``--init-from`` its ``best.npz``)
and every refusal; the ``slow`` test adds ``--init-from`` a pretrained optimizer's name."""

import json

import jax
import numpy as np
import pytest

import lopt_meta
from meta_train.command import cli, validation
from meta_train.command.logs import read_metrics
from tasks import heldout
from tests.trees import assert_trees_equal

TINY = (heldout.HeldOutTask("digits_mlp_8", "image_mlp",
                            {"dataset": "digits", "hidden_sizes": (8,), "batch_size": 16}, 30),
        heldout.HeldOutTask("digits_conv_4", "image_conv",
                            {"dataset": "digits", "channels": (4,), "batch_size": 16}, 20))
RUN = ["--task", "digits_mlp", "--lopt", "anchored_adam", "--task-option", "hidden_sizes", "[8]",
       "--task-option", "batch_size", "16", "--horizon", "20", "--estimator", "nres",
       "--num-particles", "2", "--unroll-length", "5", "--sigma", "0.3", "--outer-lr", "0.3",
       "--eval-every", "0", "--log-every", "2", "--checkpoint-every", "2", "--wandb", "disabled"]


@pytest.fixture
def tiny_validation(monkeypatch):
  monkeypatch.setattr(heldout, "VALIDATION", TINY)


def test_a_run_keeps_the_theta_with_the_best_heldout_score(tmp_path, tiny_validation):
  """Meta-validation at steps 0, 2, 4, 6: each record's eval_heldout is the geometric mean of
  its tasks' ratios; best.npz holds the theta of the lowest, which scores exactly that again;
  ``--init-from best.npz`` starts a new run at that theta (its step-0 score is the same)."""
  out = tmp_path / "run"
  assert cli.main(["train", *RUN, "--outer-steps", "6", "--heldout-every", "2",
                   "--out", str(out)]) == 0
  records = [r for r in read_metrics(out) if "eval_heldout" in r]
  assert [r["step"] for r in records] == [0, 2, 4, 6]
  for r in records:
    ratios = [r[f"eval_heldout/{t.name}"] for t in TINY]
    assert r["eval_heldout"] == pytest.approx(float(np.exp(np.mean(np.log(ratios)))), rel=1e-12)
  scores = [r["eval_heldout"] for r in records]
  assert len(set(scores)) > 1  # theta moved, and the score with it
  best = records[int(np.argmin(scores))]
  assert records[-1]["heldout_best"] == best["eval_heldout"]
  assert records[-1]["heldout_best_step"] == best["step"]
  lopt, theta, meta = lopt_meta.read_optimizer(out / validation.BEST_FILE)
  assert meta["step"] == best["step"]
  assert meta["eval_heldout"] == best["eval_heldout"]
  assert validation.HeldOutValidator(lopt)(theta)["eval_heldout"] == best["eval_heldout"]
  png = tmp_path / "run.png"
  assert cli.main(["plot", str(out), "--out", str(png)]) == 0  # with the meta-validation row
  assert png.stat().st_size > 0

  again = tmp_path / "again"
  assert cli.main(["train", *RUN, "--outer-steps", "2", "--heldout-every", "2", "--init-from",
                   str(out / validation.BEST_FILE), "--out", str(again)]) == 0
  first = read_metrics(again)[0]
  assert first["step"] == 0 and first["eval_heldout"] == best["eval_heldout"]


@pytest.mark.slow
def test_init_from_a_pretrained_name_starts_at_its_theta(tmp_path):
  """``--init-from NAME`` loads the shipped weights: the run's theta at step 0 is theirs."""
  out = tmp_path / "run"
  lopt, theta, _ = lopt_meta.read_pretrained(lopt_meta.pretrained.DEFAULT)
  args = ["train", "--task", "digits_mlp", "--lopt", lopt.name, "--horizon", "10",
          "--estimator", "nres", "--num-particles", "2", "--unroll-length", "5",
          "--outer-lr", "1e-9", "--eval-every", "0", "--wandb", "disabled",
          "--init-from", lopt_meta.pretrained.DEFAULT, "--outer-steps", "1", "--out", str(out)]
  args.append("--lopt-option")  # one flag, NAME VALUE pairs
  for name, value in lopt.config().items():
    args += [name, json.dumps(value)]
  assert cli.main(args) == 0
  from meta_train.command import run as run_lib
  state = run_lib.load_run(out).state
  np.testing.assert_allclose(np.concatenate([np.ravel(x) for x in jax.tree.leaves(state.theta)]),
                             np.concatenate([np.ravel(x) for x in jax.tree.leaves(theta)]),
                             atol=1e-6)  # one outer step at lr 1e-9 moves nothing visible


@pytest.mark.parametrize("extra, message", [
    (["--init-from", "nowhere.npz"], "init_from: nowhere.npz is not a lopt-meta learned optimizer "
     "(no such file)"),
    (["--init-from", "bogus"], "init_from: 'bogus' is neither a pretrained optimizer"),
    (["--init-from", "small_mix_nres"], "init_from: small_mix_nres holds 'mlp' with"),
    (["--heldout-every", "-1"], "heldout_every: must be an int >= 0 (0: never); got -1"),
])
def test_bad_init_from_and_heldout_every_are_one_error(tmp_path, capsys, extra, message):
  out = tmp_path / "run"
  assert cli.main(["train", *RUN, "--outer-steps", "2", "--out", str(out), *extra]) == 2
  err = capsys.readouterr().err
  assert f"meta-train: error: {message}" in err
  assert not out.exists()


def test_heldout_every_needs_a_learned_optimizer(tmp_path, capsys):
  assert cli.main(["train", "--task", "toy2d", "--heldout-every", "5", "--out",
                   str(tmp_path / "run")]) == 2
  assert ("meta-train: error: heldout_every: meta-validates learned optimizers; task 'toy2d' "
          "trains none") in capsys.readouterr().err
