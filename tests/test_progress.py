"""Speed and time left count only timed work: not the compiling first step, not a resumed run's
earlier steps, not checkpoints or evaluations."""

import pytest

from tarflow_flax import progress


class Clock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def test_first_unit_pauses_and_resumed_units_are_not_timed():
  clock = Clock()
  pace = progress.Pace(total=100, done=40, clock=clock)  # Resumed at step 40.
  assert pace.time_left() == "?" and pace.rate() is None
  clock.now = 30.0  # The first step: 30 s of compilation.
  pace.advance()
  assert pace.rate() is None and pace.time_left() == "?"
  for _ in range(9):  # Then 0.5 s per step.
    clock.now += 0.5
    pace.advance()
  with pace.paused():  # A 20 s checkpoint / evaluation.
    clock.now += 20.0
  clock.now += 0.5
  pace.advance()
  assert pace.done == 51
  assert pace.rate() == pytest.approx(2.0)
  assert pace.seconds_left() == pytest.approx(49 * 0.5)
  assert pace.time_left() == "00:00:24"


def test_window_rate_restarts_at_each_call():
  clock = Clock()
  pace = progress.Pace(total=10, clock=clock)
  pace.advance()
  clock.now = 1.0
  pace.advance(2)  # 2 units in 1 s.
  assert pace.window_rate() == pytest.approx(2.0)
  assert pace.window_rate() is None  # Nothing timed since.
  clock.now = 5.0
  pace.advance(2)  # 2 units in 4 s.
  assert pace.window_rate() == pytest.approx(0.5)
  assert pace.rate() == pytest.approx(4 / 5)
  clock.now = 100.0
  pace.advance(100)  # Past the total: nothing left, never negative.
  assert pace.seconds_left() == 0.0
