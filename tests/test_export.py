"""Export: a learned optimizer as one file, loaded back as an optax transformation.

The quick tier (``-m "not slow"``) saves, reads back and trains with exported optimizers (``meta-train
export`` and ``eval`` of a learned-optimizer run are quick in tests/test_run_readers.py); the
``slow`` test adds a learned-optimizer run evaluated against Adam, exported, and refused a second
export over the first."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt_meta
from lopt_meta import export
from meta_train.command import cli
from meta_train.command import run as run_lib
from tasks import data


def _sign_descent_theta(lopt: lopt_meta.MLPLOpt):
  """MLPLOpt weights whose step is +normalized gradient: h1 = [relu(g), relu(-g)], h2 = h1,
  direction = h2[0] - h2[1] = g / rms(g), magnitude 0. A known-good optimizer to train with."""
  theta = jax.tree.map(jnp.zeros_like, lopt.init_theta(jax.random.key(0)))
  w0 = theta["w0"].at[0, 0].set(1.0).at[0, 1].set(-1.0)  # feature 0 is the normalized gradient
  w1 = theta["w1"].at[0, 0].set(1.0).at[1, 1].set(1.0)
  w2 = theta["w2"].at[0, 0].set(1.0).at[1, 0].set(-1.0)
  return dict(theta, w0=w0, w1=w1, w2=w2)


class Classifier(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(10)(nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1))))


def test_exported_optimizer_trains_a_fresh_flax_model(tmp_path):
  lopt = lopt_meta.MLPLOpt(step_mult=0.05)
  path = lopt_meta.save_optimizer(tmp_path / "lopt.npz", lopt, _sign_descent_theta(lopt),
                                  metadata={"note": "test"})
  tx = optax.chain(optax.clip_by_global_norm(10.0), lopt_meta.load_optimizer(path))
  assert isinstance(lopt_meta.load_optimizer(path), optax.GradientTransformationExtraArgs)

  digits = data.load("digits")["train"]
  model = Classifier()
  params = model.init(jax.random.key(0), digits.images[:1].astype(jnp.float32))
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, i):
    idx = (jnp.arange(128) + 128 * i) % digits.labels.shape[0]
    batch = data.gather(digits, idx)
    def loss_fn(p):
      logits = model.apply(p, batch["image"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params, loss=loss)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for i in range(200):
    params, opt_state, loss = train_step(params, opt_state, i)
    losses.append(float(loss))
  assert np.mean(losses[:5]) > 2.0 and np.mean(losses[-20:]) < 0.5


def test_round_trip_keeps_architecture_and_theta(tmp_path):
  for lopt in (lopt_meta.MLPLOpt(hidden_sizes=(16, 8)), lopt_meta.AdafacMLPLOpt(),
               lopt_meta.HyperAdam(learning_rate=3e-3)):
    theta = jax.tree.map(lambda x: x + 0.5, lopt.init_theta(jax.random.key(1)))
    path = lopt_meta.save_optimizer(tmp_path / f"{lopt.name}.npz", lopt, theta)
    again, theta2, _ = lopt_meta.read_optimizer(path)
    assert type(again) is type(lopt) and again.config() == lopt.config()
    for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(theta2)):
      np.testing.assert_array_equal(a, b)
    with np.load(path, allow_pickle=False) as npz:  # no pickles anywhere in the file
      assert export._META in npz.files


def test_a_file_that_is_not_a_learned_optimizer_is_rejected(tmp_path):
  other = tmp_path / "weights.npz"
  np.savez(other, w=np.ones(3))
  with pytest.raises(ValueError, match=rf"^path: {other} is not a lopt-meta learned optimizer "
                     r"\(no lopt-meta header\)$"):
    lopt_meta.load_optimizer(other)
  text = tmp_path / "notes.txt"
  text.write_text("hello")
  with pytest.raises(ValueError, match=r"is not a lopt-meta learned optimizer \(unreadable"):
    lopt_meta.load_optimizer(text)
  with pytest.raises(ValueError, match=r"is not a lopt-meta learned optimizer \(no such file\)$"):
    lopt_meta.load_optimizer(tmp_path / "missing.npz")


LOPT_RUN = ["train", "--task", "digits_mlp", "--lopt", "mlp", "--estimator", "nres",
            "--num-particles", "4", "--sigma", "0.01", "--unroll-length", "5", "--horizon", "20",
            "--outer-steps", "10", "--outer-lr", "1e-3", "--log-every", "5", "--eval-every", "10",
            "--eval-episodes", "2", "--wandb", "disabled"]


@pytest.mark.slow
def test_export_command_and_learned_optimizer_run(tmp_path, capsys):
  out = tmp_path / "run"
  assert cli.main(LOPT_RUN + ["--out", str(out)]) == 0
  records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
  assert records[0]["adam_lr"] in (1e-3, 3e-3, 1e-2, 3e-2) and "adam_curve" in records[0]
  assert "eval_vs_adam" in records[-1] and len(records[-1]["eval_curve"]["step"]) == 20
  target = tmp_path / "exported.npz"
  assert cli.main(["export", str(out), "--out", str(target)]) == 0
  lopt, theta, meta = lopt_meta.read_optimizer(target)
  assert meta["step"] == 10 and meta["task"] == "digits_mlp"
  loaded = run_lib.load_run(out)
  for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(loaded.theta)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  capsys.readouterr()
  assert cli.main(["export", str(out), "--out", str(target)]) == 2
  assert capsys.readouterr().err == (f"meta-train: error: out: {target} exists; choose another "
                                     "--out or pass --overwrite\n")
  assert cli.main(["eval", str(out)]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["step"] == 10 and result["eval_loss"] > 0 and "adam_loss" in result
