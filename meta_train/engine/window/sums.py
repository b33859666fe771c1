"""What a window adds up per pair from its stored losses."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from meta_train.engine.xla_cpu import sum_leading


class WindowOut(NamedTuple):
  """What a window adds up per pair over its valid steps (a step is valid when it was taken and
  every branch's loss is finite); built by keyword, each stage filling its fields.

  Attributes:
    count: ``[P] int32``, valid steps.
    loss: ``[P, S]``, the sum of each branch's valid losses, column ``s`` for the branch of
      ``signs[s]``; :attr:`loss_plus_minus` reads the antithetic pair's.
    dl: ``[E, P]``, the sum of ``L+ - L-`` over the valid steps of each noise segment (from
      :func:`window_sums`; ``None`` once credited, and in windows that estimate nothing).
    gsum: theta-like, leaves ``[P, ...]``: ``sum_t (L+_t - L-_t) * credit_t`` per pair (``None``
      in windows that estimate nothing).
    nonfinite: ``[P] int32``, steps masked because a loss was not finite (set when the window
      closes).
    resets: ``[P] int32``, episodes begun during the window (set when the window closes).
  """
  count: jax.Array
  loss: jax.Array
  dl: jax.Array | None = None
  gsum: Any = None
  nonfinite: jax.Array | None = None
  resets: jax.Array | None = None

  @property
  def loss_plus_minus(self) -> jax.Array:
    """``[P, 2]``: the loss sums of the antithetic branches ``theta + eps`` and ``theta - eps``."""
    return self.loss[:, :2]

  @property
  def loss_only(self) -> jax.Array:
    """``[P]``: the loss sums of a window with one branch (truncated backprop)."""
    return self.loss[:, 0]


def window_sums(losses: jax.Array, *, num_segments: int, taken: jax.Array | None = None,
                segment: jax.Array | None = None) -> WindowOut:
  """The sums of a window's losses ``[W, P, S]``: ``count``, ``loss`` and ``dl`` of a
  :class:`WindowOut`.

  Args:
    losses: every step's losses.
    num_segments: ``E``, the noise segments to sum ``dl`` over; 0 for no ``dl``.
    taken: ``[W, P] bool``, the steps each pair took; ``None``: all of them.
    segment: ``[W, P] int32``, each step's segment (needed when ``E > 1``).

  With every step taken, one segment and every loss finite (the common window), the sums are two
  products over the steps; otherwise masked sums, one product per row. Whether every loss was
  finite is read from the loss sums (a sum overflowing from finite terms takes the masked path,
  which is exact too).
  """
  W, num_pairs, num_branches = losses.shape

  def masked(_):
    finite = taken if taken is not None else jnp.ones((W, num_pairs), bool)
    for b in range(num_branches):  # an explicit & over the branches fuses where a reduction won't
      finite = finite & jnp.isfinite(losses[..., b])
    safe = jnp.where(finite[..., None], losses, 0.0)
    dl = None
    if num_segments == 1:
      dl = sum_leading(safe[..., 0] - safe[..., 1])[None]
    elif num_segments > 1:
      diff = safe[..., 0] - safe[..., 1]
      dl = jnp.stack([sum_leading(jnp.where(segment == e, diff, 0.0))
                      for e in range(num_segments)])
    count = sum_leading(finite.astype(jnp.float32)).astype(jnp.int32)
    return WindowOut(count=count, loss=sum_leading(safe), dl=dl)

  if taken is not None or num_segments > 1:
    return masked(None)
  loss_sums = sum_leading(losses)  # [P, S]

  def unmasked(_):
    dl = sum_leading(losses[..., 0] - losses[..., 1])[None] if num_segments else None
    return WindowOut(count=jnp.full((num_pairs,), W, jnp.int32), loss=loss_sums, dl=dl)
  return jax.lax.cond(jnp.isfinite(jnp.sum(loss_sums)), unmasked, masked, None)
