"""Speed and time left of a long loop, from the work that is being timed only.

The first unit of a run includes compilation, a resumed run's earlier units were done by another
process, and checkpoints, sample grids and evaluations are not steps: counting any of them makes
the first "time left" of a run too high and, after a resume, far off. `Pace` times only the units
after the first, with pauses excluded.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable


class Pace:
  """Units (steps, batches) done out of `total`, starting at `done` (a resumed run)."""

  def __init__(self, total: int, done: int = 0, clock: Callable[[], float] = time.monotonic):
    self.total, self.done = total, done
    self._clock = clock
    self._last = None  # Clock at the end of the last unit; None before the first one.
    self._seconds = self._units = 0.0          # Timed work of the whole run.
    self._window_seconds = self._window_units = 0.0  # Since the last `window_rate()`.

  def advance(self, units: int = 1) -> None:
    """`units` more are finished. Those of the first call are not timed: they include the
    compilation (and whatever else the loop did before it)."""
    now = self._clock()
    if self._last is not None:
      self._seconds += now - self._last
      self._units += units
      self._window_seconds += now - self._last
      self._window_units += units
    self._last = now
    self.done += units

  @contextlib.contextmanager
  def paused(self):
    """Work done inside (a checkpoint, samples, an evaluation) is not counted as units' time."""
    try:
      yield
    finally:
      if self._last is not None:
        self._last = self._clock()

  def rate(self) -> float | None:
    """Units per second over every timed unit so far; None before two units."""
    return self._units / self._seconds if self._seconds > 0 else None

  def window_rate(self) -> float | None:
    """Units per second since the previous call (what a log line reports), then restarts."""
    rate = self._window_units / self._window_seconds if self._window_seconds > 0 else None
    self._window_seconds = self._window_units = 0.0
    return rate

  def seconds_left(self) -> float | None:
    rate = self.rate()
    return None if rate is None else max(self.total - self.done, 0) / rate

  def time_left(self) -> str:
    """HH:MM:SS left at the run's pace so far, or '?' before it is known."""
    seconds = self.seconds_left()
    return "?" if seconds is None else time.strftime("%H:%M:%S", time.gmtime(seconds))
