"""The processes' heartbeat: a process that stops answering ends the others with one line.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from meta_train.command.distributed.identity import (coordination_client, process_count,
                                                     process_index)


#: Exit status of a process that ends because another process of its run stopped answering.
EXIT_PEER_LOST = 3


class Pulse:
  """Tells the processes of a run that the others are alive, and ends this one when one is not.

  A thread increments this process's counter in the coordination service's key-value store every
  ``interval_s`` and reads the others'. A counter that has not moved for ``timeout_s`` (measured
  on this process's clock), or a coordinator that no longer answers (process 0 is gone), means a
  process died, was killed or is stuck: this process prints one line saying which and how to
  continue (:attr:`hint`), and ends with :data:`EXIT_PEER_LOST` instead of waiting forever in a
  collective. A process that ends its run normally says so first (:meth:`stop`), so the others
  do not take it for dead.
  """

  def __init__(self, timeout_s: float, interval_s: float | None = None, exit=os._exit):
    self.timeout_s = float(timeout_s)
    self.interval_s = interval_s if interval_s is not None else max(0.5, self.timeout_s / 10)
    self.hint = "resume the run from its last checkpoint with the same number of processes"
    self._exit = exit
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._beat, name="meta-train-pulse", daemon=True)

  def start(self) -> "Pulse":
    self._thread.start()
    return self

  def stop(self, finished: bool = True) -> None:
    """Stops the thread; ``finished``: this process ended its run (the others will not wait)."""
    if self._stop.is_set():
      return
    self._stop.set()
    self._thread.join(timeout=5)
    if finished:
      try:
        coordination_client().key_value_set(f"lopt_meta/finished/{process_index()}", "1",
                                            allow_overwrite=True)
      except Exception:  # noqa: BLE001 - the coordinator may already be gone at the very end
        pass

  def _beat(self) -> None:
    me, n = process_index(), process_count()
    last = {i: (None, time.monotonic()) for i in range(n) if i != me}
    while not self._stop.wait(self.interval_s):
      try:
        client = coordination_client()
        client.key_value_increment(f"lopt_meta/pulse/{me}", 1)
        for i, (seen, since) in list(last.items()):
          try:
            value = client.key_value_try_get(f"lopt_meta/pulse/{i}")
          except Exception as e:  # noqa: BLE001 - not written yet: NOT_FOUND
            if "NOT_FOUND" not in str(e).upper():
              raise
            value = None
          now = time.monotonic()
          if value != seen:
            last[i] = (value, now)
          elif now - since > self.timeout_s and not self._finished(client, i):
            self._lost(f"process {i} of {n} has not answered for {now - since:.0f} s (it died, "
                       "was killed, or is stuck)")
            return
      except Exception as e:  # noqa: BLE001 - the coordination service itself is gone
        if self._stop.is_set():
          return
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        self._lost(f"the run's coordinator (process 0) no longer answers ({reason})")
        return

  @staticmethod
  def _finished(client, i: int) -> bool:
    try:
      return client.key_value_try_get(f"lopt_meta/finished/{i}") == "1"
    except Exception:  # noqa: BLE001
      return False

  def _lost(self, what: str) -> None:
    if self._stop.is_set():
      return
    print(f"meta-train: error: {what}; stopping process {process_index()} too (exit status "
          f"{EXIT_PEER_LOST}); {self.hint}", file=sys.stderr, flush=True)
    self._exit(EXIT_PEER_LOST)


PULSE: Pulse | None = None


def start(timeout_s: float) -> Pulse:
  """Starts this process's :class:`Pulse` (called by :func:`~.joining.initialize` once the
  processes are joined)."""
  global PULSE
  PULSE = Pulse(timeout_s).start()
  return PULSE


def finish(finished: bool = True) -> None:
  """Stops this process's :class:`Pulse` (see :meth:`Pulse.stop`), if it runs."""
  if PULSE is not None:
    PULSE.stop(finished)


def set_hint(hint: str) -> None:
  """What the others' error line tells the user to do if a process is lost (e.g. how to resume)."""
  if PULSE is not None:
    PULSE.hint = hint
