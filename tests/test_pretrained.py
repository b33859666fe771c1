"""The shipped pretrained optimizer trains a fresh model for hundreds of steps."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import lopt_meta
from tasks import data

STEPS, BATCH = 300, 64


class _MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(10)(nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1))))


def _train(tx, split, key):
  """``STEPS`` steps of ``tx`` on a fresh MLP, batches of ``BATCH`` drawn from ``split``; returns
  the training losses ``[STEPS]`` (each before its step) and the trained parameters."""
  model = _MLP()
  params = model.init(key, data.gather(split, jnp.arange(1))["image"])

  def loss_fn(params, batch):
    logits = model.apply(params, batch["image"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

  def step(carry, k):
    params, opt_state = carry
    batch = data.gather(split, jax.random.randint(k, (BATCH,), 0, split.labels.shape[0]))
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params, loss=loss)
    return (optax.apply_updates(params, updates), opt_state), loss

  run = jax.jit(lambda params, keys: jax.lax.scan(step, (params, tx.init(params)), keys))
  (params, _), losses = run(params, jax.random.split(jax.random.fold_in(key, 1), STEPS))
  return np.asarray(losses), (model, params, loss_fn)


def test_the_default_pretrained_optimizer_trains_a_digits_mlp():
  """lopt_meta.load_pretrained() (the shipped default, as a user calls it) on a fresh 64-32-10
  MLP on the digits for 300 steps: every loss is finite, the mean of the last 20 training losses
  is below half the first one (about ln 10 = 2.3, the untrained model's), and so is the trained
  model's loss on the held-out test split."""
  splits = data.load("digits")
  losses, (_, params, loss_fn) = _train(lopt_meta.load_pretrained(), splits["train"],
                                            jax.random.key(0))
  assert losses.shape == (STEPS,) and np.all(np.isfinite(losses)), losses
  assert abs(losses[0] - np.log(10)) < 0.5, losses[0]  # an untrained classifier's loss
  assert np.mean(losses[-20:]) < 0.5 * losses[0], (losses[0], losses[-20:])
  test = splits["test"]
  test_loss = float(loss_fn(params, data.gather(test, jnp.arange(test.labels.shape[0]))))
  assert np.isfinite(test_loss) and test_loss < 0.5 * losses[0], test_loss
