"""Progress of long work: a bar on a terminal, plain log lines elsewhere.

On an interactive terminal (and ``CI`` unset) a ``tqdm`` bar shows the outer step, meta-loss and
steps per second; otherwise (a file, a pipe, CI) about 50 plain lines per run are printed, so
logs stay readable. Evaluation results are printed as lines of their own, also about 50 per run.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO


def interactive(stream: TextIO | None = None) -> bool:
  stream = stream if stream is not None else sys.stderr
  return stream.isatty() and not os.environ.get("CI")


class Progress:
  """``update(done, record)`` after every chunk of outer steps; ``close()`` at the end."""

  def __init__(self, total: int, initial: int = 0, *, desc: str = "meta-train",
               stream: TextIO | None = None, bar: bool | None = None, lines: int = 50):
    self.total, self.done = total, initial
    self.stream = stream if stream is not None else sys.stderr
    self.bar = None
    if interactive(self.stream) if bar is None else bar:
      from tqdm import tqdm
      self.bar = tqdm(total=total, initial=initial, desc=desc, file=self.stream, unit="step",
                      dynamic_ncols=True)
    self.every = max(1, (total - initial) // lines)
    self.next_line = self.next_note = initial + self.every

  def update(self, done: int, record: dict[str, Any]) -> None:
    fields = {"meta_loss": f"{record['meta_loss']:.4g}"} if "meta_loss" in record else {}
    if "eval_loss" in record:
      fields["eval"] = f"{record['eval_loss']:.4g}"
    if self.bar is not None:
      self.bar.set_postfix(fields, refresh=False)
      self.bar.update(done - self.done)
    elif done >= self.next_line or done == self.total:
      self.next_line = done + self.every
      text = "  ".join(f"{k} {v}" for k, v in fields.items() if k != "eval")  # eval: own line
      rate = record.get("outer_steps_per_s")
      rate = f"  {rate:.1f} steps/s" if rate else ""
      print(f"step {done}/{self.total}: {text}{rate}", file=self.stream, flush=True)
    self.done = done

  def note(self, done: int, line: str) -> None:
    """A message about step ``done`` (e.g. an evaluation), shown at most about ``lines`` times
    per run (always at the last step) so that frequent evaluations do not flood the log."""
    if done >= self.next_note or done == self.total:
      self.next_note = done + self.every
      self.write(line)

  def write(self, line: str) -> None:
    """A message that does not break the bar."""
    if self.bar is not None:
      self.bar.write(line, file=self.stream)
    else:
      print(line, file=self.stream, flush=True)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
