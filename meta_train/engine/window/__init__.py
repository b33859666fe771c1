"""The window engine: how the workers' particles run one window of ``W`` steps.

Four named steps, composed by :func:`meta_train.engine.workers.run_window`:

* :func:`plan_window` (:mod:`.plan`): each pair's events in closed form, a :class:`WindowPlan`;
* :mod:`.segments`: the noise drawn for the plan and the window's stretches of constant noise,
  each with its particles' theta and its credit (:class:`Segments`);
* :func:`rollout` (:mod:`.rollout`): the one ``lax.scan`` over the steps;
* :func:`window_sums` (:mod:`.sums`): the per-pair sums of the stored losses, a :class:`WindowSums`.
"""

from meta_train.engine.window.particles import Particles
from meta_train.engine.window.plan import NoiseSchedule, WindowPlan, draw_steps, max_draws, plan_window
from meta_train.engine.window.rollout import Restart, rollout
from meta_train.engine.window.segments import Segments, sample_noise
from meta_train.engine.window.sums import WindowSums, window_sums

__all__ = ["NoiseSchedule", "Particles", "Restart", "Segments", "WindowPlan", "WindowSums",
           "draw_steps", "max_draws", "plan_window", "rollout", "sample_noise", "window_sums"]
