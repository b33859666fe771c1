"""One writer per run folder: the lock that ``train`` and ``resume`` hold while they run.

The lock is an exclusive ``flock`` on ``RUN_DIR/run.lock``, taken before anything in the folder
is created, deleted or restored, and held until the run ends; the file names its holder (host,
process id, start time, command) and is removed when the run ends. The kernel releases the lock
when its process exits in any way (``kill -9`` included), and NFSv4, Lustre (mounted with
``flock``) and GPFS release the lock of a lost host when its lease expires, so a lock never
outlives its holder: ``resume`` after a crash just takes it (the file a killed process left
behind is taken over). A refused second writer prints the holder:

    meta-train: error: out: run folder RUN is being trained by host h1, process 4242 (since
    2026-12-03 07:40:12 UTC, 'meta-train train ...'); wait for it to end, or stop it (Ctrl-C or
    kill -TERM 4242 on h1 saves a checkpoint) and 'meta-train resume RUN'

With several processes (:mod:`meta_train.command.distributed`) process 0 holds the run's one lock; the
others take none and learn the holder from process 0. Readers (``load_run``, ``eval``,
``export``, ``plot``) never touch the lock: reading a live run is always allowed.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path

from lopt_meta.errors import ConfigError

LOCK_FILE = "run.lock"


@dataclasses.dataclass(frozen=True)
class Holder:
  """Who holds (or last held) a run's lock."""
  host: str
  pid: int
  since: str  # UTC, "YYYY-MM-DD HH:MM:SS UTC"
  command: str

  @classmethod
  def me(cls) -> Holder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return cls(host=socket.gethostname(), pid=os.getpid(),
               since=now.strftime("%Y-%m-%d %H:%M:%S UTC"),
               command=" ".join(["meta-train", *sys.argv[1:]])[:300])

  def describe(self) -> str:
    return (f"host {self.host}, process {self.pid} (since {self.since}, "
            f"{self.command!r})")


def _read_holder(path: Path) -> Holder | None:
  try:
    data = json.loads(path.read_text())
    return Holder(host=str(data["host"]), pid=int(data["pid"]), since=str(data["since"]),
                  command=str(data.get("command", "")))
  except (OSError, ValueError, KeyError, TypeError):
    return None


class RunLock:
  """The exclusive lock of one run folder (see the module docstring).

  Use :meth:`acquire` (raises :class:`ConfigError` naming the holder when another process has
  it) and :meth:`release`, or the object as a context manager.
  """

  def __init__(self, run_dir: str | os.PathLike):
    self.run_dir = Path(run_dir)
    self.path = self.run_dir / LOCK_FILE
    self._fd: int | None = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self, *, field: str = "out") -> Holder:
    """Takes the lock (creating the run folder if needed); returns this process's ``Holder``.

    Raises:
      ConfigError: ``field``: another live process holds it (its host, pid, start and command
        in the message). Nothing in the folder is changed then.
    """
    if self.held:
      return _read_holder(self.path) or Holder.me()
    self.run_dir.mkdir(parents=True, exist_ok=True)
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        os.close(fd)
        self._refuse(field, e)
      if _same_file(fd, self.path):
        break
      os.close(fd)  # its holder removed the file while we waited: lock the new one
    me = Holder.me()
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(dataclasses.asdict(me)) + "\n").encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return me

  def _refuse(self, field: str, error: OSError):
    if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
      raise ConfigError(field, f"cannot lock run folder {self.run_dir} ({error.strerror}); its "
                        "file system does not support file locks (flock)") from None
    holder = _read_holder(self.path)
    who = holder.describe() if holder else "another process"
    stop = (f"stop it (Ctrl-C, or kill -TERM {holder.pid} on {holder.host}, saves a "
            "checkpoint)" if holder else "stop it")
    raise ConfigError(field, f"run folder {self.run_dir} is being trained by {who}; wait for "
                      f"it to end, or {stop} and then 'meta-train resume {self.run_dir}'") from None

  def release(self) -> None:
    """Removes the lock file and releases the lock (in that order, so that a process waiting
    on the old file sees it gone and locks a new one)."""
    if self._fd is not None:
      if _same_file(self._fd, self.path):
        self.path.unlink()
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> RunLock:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def _same_file(fd: int, path: Path) -> bool:
  """Whether the open file ``fd`` is the file at ``path`` now."""
  try:
    here = os.stat(path)
  except FileNotFoundError:
    return False
  there = os.fstat(fd)
  return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
