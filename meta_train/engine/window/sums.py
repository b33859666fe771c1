"""What a window adds up per pair from its stored losses."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from meta_train.engine.xla_cpu import sum_leading


class WindowSums(NamedTuple):
  """Per-pair sums over a window's valid steps (a step is valid when it was taken and every
  branch's loss is finite).

  Attributes:
    count: ``[P] float32``, valid steps (whole numbers: exact).
    loss: ``[P, S]``, the sum of each branch's valid losses.
    dl: ``[E, P]``, the sum of ``L+ - L-`` (branches 0 and 1) over the valid steps of each noise
      segment; ``None`` when the window estimates no gradient.
  """
  count: jax.Array
  loss: jax.Array
  dl: jax.Array | None


def window_sums(losses: jax.Array, *, num_segments: int, taken: jax.Array | None = None,
                segment: jax.Array | None = None) -> WindowSums:
  """The sums of a window's losses ``[W, P, S]``.

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
    return WindowSums(sum_leading(finite.astype(jnp.float32)), sum_leading(safe), dl)

  if taken is not None or num_segments > 1:
    return masked(None)
  loss_sums = sum_leading(losses)  # [P, S]

  def unmasked(_):
    dl = sum_leading(losses[..., 0] - losses[..., 1])[None] if num_segments else None
    return WindowSums(jnp.full((num_pairs,), W, jnp.float32), loss_sums, dl)
  return jax.lax.cond(jnp.isfinite(jnp.sum(loss_sums)), unmasked, masked, None)
