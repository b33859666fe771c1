"""Least squares on a random linear problem: a new inner task with its options."""

import jax
import jax.numpy as jnp

import tasks


class LinearRegression(tasks.InnerTask):
  """Fit ``y = x @ w + noise`` with a linear model, ``w`` drawn once from ``seed`` and every
  batch drawn fresh (``x ~ N(0, I)``), so the task needs no data set."""

  def __init__(self, dim: int, batch_size: int, seed: int = 0, noise: float = 0.1):
    self.name, self.batch_size, self.noise = f"linear_regression_{dim}", batch_size, noise
    self.w = jax.random.normal(jax.random.key(seed), (dim,)) / jnp.sqrt(dim)
    self.num_classes = 0  # no labels
    self.start_loss = float(self.w @ self.w) + noise ** 2  # the expected loss of w = 0, b = 0

  def init_params(self, key):
    return {"w": jnp.zeros_like(self.w), "b": jnp.zeros(())}

  def init_state(self, key):
    return ()  # no data order, no curriculum

  def train_batch(self, data, state, key):
    return self.eval_batch(data, "train", key), state

  def eval_batch(self, data, split, key, *, batch_size=None):
    kx, kn = jax.random.split(key)
    x = jax.random.normal(kx, (batch_size or self.batch_size, self.w.shape[0]))
    return {"x": x, "y": x @ self.w + self.noise * jax.random.normal(kn, (x.shape[0],))}

  def loss(self, params, batch):
    return jnp.mean((batch["x"] @ params["w"] + params["b"] - batch["y"]) ** 2)

  def normalize(self, loss):  # the meta-loss: clipped to twice the starting loss, NaN to that
    bound = 2.0 * self.start_loss
    return jnp.where(jnp.isnan(loss), bound, jnp.clip(loss, 0.0, bound))


@tasks.register("linear_regression")
def linear_regression(*, dim: int = 8, batch_size: int = 32, seed: int = 0) -> LinearRegression:
  return LinearRegression(dim, batch_size, seed)
