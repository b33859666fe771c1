"""The window engine: how the workers' particles run one window of ``W`` steps.

Entry points (:mod:`.run`): :func:`run_window` (the estimators' window), :func:`tbptt_window`
(truncated backprop's) and :func:`burn_in` (step-unlocking's start-up). A window, in named steps:

* :func:`plan_window` (:mod:`.plan`): each pair's events in closed form, a :class:`WindowPlan`:
  its episode start, and its noise draws, at an episode start and wherever the estimator's noise
  rule draws. A rule is a :class:`NoiseRule` (:mod:`.noise`, the interface the window reads),
  defined beside its estimator in :mod:`meta_train.engine.estimators`; it also says what the
  loss differences are credited to;
* :mod:`.segments`: the noise drawn for the plan and the window's stretches of constant noise,
  each with its particles' theta and its credit (:class:`Segments`);
* :mod:`.forms`: one of the two forms (events on the first step, or anywhere), each one
  :func:`rollout` (:mod:`.rollout`), the one ``lax.scan`` over the steps;
* :func:`window_sums` (:mod:`.sums`): the per-pair sums of the stored losses, credited: a
  :class:`WindowOut`;
* closing (:mod:`.run`): the workers' positions, episode lengths and noise advance.
"""

from meta_train.engine.window.noise import NoiseRule
from meta_train.engine.window.particles import Particles
from meta_train.engine.window.plan import WindowPlan, draw_steps, max_draws, plan_window
from meta_train.engine.window.rollout import Restart, rollout
from meta_train.engine.window.segments import Segments, sample_noise
from meta_train.engine.window.state import WorkerState
from meta_train.engine.window.sums import WindowOut, window_sums
from meta_train.engine.window.run import ANTITHETIC, burn_in, run_window, tbptt_window

__all__ = ["ANTITHETIC", "NoiseRule", "Particles", "Restart", "Segments", "WindowOut",
           "WindowPlan", "burn_in", "draw_steps", "max_draws", "plan_window", "WorkerState",
           "rollout", "run_window", "sample_noise", "tbptt_window", "window_sums"]
