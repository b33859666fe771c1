"""A run's watchdog: warns when outer steps stall, and ends a stuck run on SIGINT/SIGTERM.

Python runs signal handlers in the main thread, between bytecodes. While the main thread waits for
a compiled XLA program that never returns (a deadlock inside XLA or a host callback that blocks),
no handler runs and ``timeout``, Ctrl-C or a cluster's preemption signal would leave the process
alive. The watchdog hears signals on a thread of its own instead: ``signal.set_wakeup_fd`` makes the
interpreter's C-level handler write each signal's number to a socket the moment it arrives.

The run loop tells the watchdog what it is doing (:meth:`Watchdog.phase`), when outer steps
complete (:meth:`Watchdog.completed`), and when it writes to disk (:meth:`Watchdog.writing`). The
watchdog thread then:

* on SIGINT or SIGTERM, gives the loop ``grace_s`` seconds to finish its phase (the loop itself
  saves a checkpoint and exits when it gets there). If the phase is still running after that,
  it prints one line saying where the run is stuck and ends the process with ``128 + signum``
  (130, 143) without saving; a second signal ends it at once. It never ends the process while
  the loop writes (a checkpoint, a metrics line), so the last complete checkpoint is kept and
  nothing on disk is half written.
* warns (a line through ``write``) when a chunk of outer steps has run ``stall_factor`` times
  longer than it should at the recent median time per outer step, and at least ``stall_min_s``
  seconds (any phase before the first chunk completes: ``10 * stall_min_s``, since it includes
  compilation). The warning repeats at doubling intervals while the stall lasts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _duration(seconds: float) -> str:
  """``4.2 s``, ``42 s``, ``7m02s``, ``3h05m``."""
  if seconds < 9.95:
    return f"{seconds:.1f} s"
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds} s"
  minutes, seconds = divmod(seconds, 60)
  if minutes < 60:
    return f"{minutes}m{seconds:02d}s"
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m"


class Watchdog:
  """Watches one run loop (see the module docstring).

  Args:
    write: prints a line for the user (the progress display's ``write``).
    grace_s: how long a phase may go on after SIGINT/SIGTERM before the process is ended.
    stall_factor: warn after this many times the expected time of the running chunk of steps.
    stall_min_s: never warn earlier than this (``10 *`` this before the first step completes).
    poll_s: how often the thread looks at the clock.
    exit: ends the process (``os._exit``; replaced in tests).
  """

  def __init__(self, write: Callable[[str], None], *, grace_s: float = 30.0,
               stall_factor: float = 5.0, stall_min_s: float = 60.0, poll_s: float = 0.25,
               exit: Callable[[int], None] = os._exit):
    self.write = write
    self.grace_s, self.stall_factor, self.stall_min_s = grace_s, stall_factor, stall_min_s
    self.poll_s = poll_s
    self._exit = exit
    self.last_checkpoint: int | None = None
    self._lock = threading.Lock()  # guards the fields below
    self._disk = threading.Lock()  # held while the loop writes to disk
    self._where, self._since, self._steps = "starting", time.monotonic(), 0
    self._per_step = deque(maxlen=20)  # seconds per outer step of recent chunks
    self._signal: tuple[int, float] | None = None
    self._next_warning: float | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._sockets: tuple[socket.socket, socket.socket] | None = None
    self._previous_fd: int | None = None

  # -- the loop's side -------------------------------------------------------------------------

  def start(self) -> "Watchdog":
    """Starts the thread; from the main thread, also starts listening for signals (the loop
    installs its own Python handlers for SIGINT and SIGTERM first)."""
    if threading.current_thread() is threading.main_thread():
      receive, send = socket.socketpair()
      receive.setblocking(False)
      send.setblocking(False)
      try:
        self._previous_fd = signal.set_wakeup_fd(send.fileno(), warn_on_full_buffer=False)
        self._sockets = (receive, send)
      except ValueError:
        receive.close()
        send.close()
    self._thread = threading.Thread(target=self._watch, name="meta-train-watchdog", daemon=True)
    self._thread.start()
    return self

  def stop(self) -> None:
    """Stops the thread and restores the previous wakeup fd."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if self._sockets is not None:
      signal.set_wakeup_fd(self._previous_fd if self._previous_fd is not None else -1)
      for s in self._sockets:
        s.close()
      self._sockets = None

  @contextlib.contextmanager
  def phase(self, where: str, steps: int = 0) -> Iterator[None]:
    """The loop is ``where`` (e.g. "running outer steps 41..50"), running ``steps`` outer steps;
    after the block, it is between phases."""
    self._enter(where, steps)
    try:
      yield
    finally:
      self._enter(f"between phases (after {where})", 0)

  def _enter(self, where: str, steps: int) -> None:
    with self._lock:
      self._where, self._since, self._steps = where, time.monotonic(), steps
      self._next_warning = None

  def completed(self, steps: int, seconds: float) -> None:
    """``steps`` outer steps completed in ``seconds``."""
    with self._lock:
      if steps > 0:
        self._per_step.append(seconds / steps)

  @contextlib.contextmanager
  def writing(self) -> Iterator[None]:
    """The loop writes to disk: the process is not ended until it is done."""
    with self._disk:
      yield

  # -- the thread ------------------------------------------------------------------------------

  def _signals(self) -> list[int]:
    if self._sockets is None:
      return []
    try:
      data = self._sockets[0].recv(64)
    except (BlockingIOError, InterruptedError):
      return []
    return [s for s in data if s in EXIT_CODES]

  def _watch(self) -> None:
    while not self._stop.wait(self.poll_s):
      now = time.monotonic()
      for signum in self._signals():
        if self._signal is not None:
          return self._end(signum, now, "a second signal")
        self._signal = (signum, now)
      if self._signal is not None:
        with self._lock:
          since = max(self._since, self._signal[1])
        if now - since > self.grace_s:
          return self._end(self._signal[0], now,
                           f"no progress in the {_duration(self.grace_s)} after the signal")
      self._warn_if_stalled(now)

  def _warn_if_stalled(self, now: float) -> None:
    with self._lock:
      history = statistics.median(self._per_step) if self._per_step else None
      if history is not None and not self._steps:
        return  # evaluating, saving: only chunks of outer steps have an expected duration
      expected = None if history is None else history * self._steps
      threshold = (10 * self.stall_min_s if expected is None
                   else max(self.stall_factor * expected, self.stall_min_s))
      running = now - self._since
      if self._next_warning is None:
        self._next_warning = threshold
      if running < self._next_warning:
        return
      self._next_warning = 2 * running
      where = self._where
    if expected is None:
      detail = "compilation included"
    else:
      detail = (f"about {_duration(expected)} expected at the recent median of {history:.3g} s "
                "per outer step")
    self.write(f"meta-train: WARNING: still {where} after {_duration(running)} ({detail}); "
               "stalled?")

  def _end(self, signum: int, now: float, why: str) -> None:
    """Ends the process with ``128 + signum`` (after any write in progress)."""
    with self._disk:  # no write starts after this: the process ends holding the lock
      with self._lock:
        where, since = self._where, self._since
      name = signal.Signals(signum).name
      saved = (f"last complete checkpoint: step {self.last_checkpoint}"
               if self.last_checkpoint is not None else "no checkpoint saved yet")
      message = (f"meta-train: {name}: stuck {where} for {_duration(now - since)} ({why}); "
                 f"exiting with {EXIT_CODES[signum]} without saving ({saved})")
      sys.stdout.flush()
      print(("\n" if sys.stderr.isatty() else "") + message, file=sys.stderr, flush=True)
      self._exit(EXIT_CODES[signum])
