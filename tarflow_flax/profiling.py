"""A jax.profiler trace of a range of training steps, opened by TensorBoard's profile plugin."""

from __future__ import annotations

import jax
from absl import logging
from clu import periodic_actions, profiler


class StepRangeProfile(periodic_actions.Profile):
  """CLU's Profile, once, over training steps `start`..`end` (counted from 1, both included).

  Call it after every step with the number of steps done (and once before the first step with
  the step the run starts from); the trace lands in `logdir/plugins/profile/<time>/`.
  """

  def __init__(self, logdir: str, start: int, end: int):
    # Starts after step start-1 is done; stops once end-start+1 more steps are done.
    super().__init__(logdir=logdir, first_profile=start - 1, num_profile_steps=end - start + 1,
                     profile_duration_ms=None, every_secs=None)
    self.start, self.end = start, end
    self._logdir = logdir

  def __call__(self, step: int, t: float | None = None, *, pending=None) -> bool:
    """`pending`: arrays of the step just dispatched; waited for at the last traced step, so
    the trace holds that step's device work and not only its dispatch."""
    if step == self.end and pending is not None:
      jax.block_until_ready(pending)
    return super().__call__(step, t)

  def _end_session(self, url) -> None:
    """Says where the trace went (CLU's own version logs an empty 'artifact' line)."""
    del url
    self._session_running = False
    self._session_started = None
    logging.info("Profile of steps %d-%d written to %s/plugins/profile (TensorBoard's profile "
                 "tab)", self.start, self.end, self._logdir)

  def close(self) -> None:
    """Ends a trace still running (a run stopped inside the range), keeping what it holds."""
    if self._session_running:
      self._end_session(profiler.stop())


def step_profile(config, logdir: str) -> StepRangeProfile | None:
  """The profile `config.profile_steps` asks for on this process (process 0 only), or None."""
  if not config.profile_steps or jax.process_index() != 0:
    return None
  return StepRangeProfile(logdir, *config.profile_steps)
