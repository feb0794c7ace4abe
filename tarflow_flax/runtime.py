"""What every job (train, sample, evaluate, convert, prepare) does the same way before and around
its work.

- `run(job)`: the absl entry of every CLI. Joins the other processes (jax.distributed), quiets
  library INFO logs, and maps outcomes to exit statuses: 0 done, 1 a user error (one line, no
  traceback), EXIT_INTERRUPTED (75) when the job stopped early on SIGTERM/SIGINT/preemption after
  saving what it had: rerunning the same command resumes.
- The distributed flags, the same on every job: automatic on Cloud TPU / GKE, otherwise
  `--coordinator_address --num_processes --process_id`.
- `path()`: every user path (local or gs://) as an `etils.epath.Path`.
- `make_mesh()`: the config's mesh over all devices of all processes, or a one-line ConfigError.
- `StopSignal`: a stop decision every process agrees on, at the same step.
"""

from __future__ import annotations

import logging as std_logging
import os
import signal
import sys
from typing import Any, Callable

import jax
from absl import app, flags, logging
from etils import epath
from jax.experimental import multihost_utils

from tarflow_flax import cli, config_lib
from tarflow_flax.paths import path  # Every job's user paths (runtime.path).

# sysexits' EX_TEMPFAIL: "temporary failure, retry". Distinct from success (0), a Python failure
# (1) and a kill by signal (128+n), so a supervisor knows to rerun the same command.
EXIT_INTERRUPTED = 75

_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (multi-host outside Cloud TPU/GKE).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", None,
                                 "Call jax.distributed.initialize (default: when any of the flags "
                                 "above is set, or automatically where JAX can discover its peers, "
                                 "e.g. on a Cloud TPU slice).")


class Interrupted(Exception):
  """The job stopped early on a signal or a preemption notice, after saving its progress."""


class UserError(ValueError):
  """Bad input from the user (flags, paths, files): reported as one line."""


# Errors that end a job with one line on stderr and exit status 1: the user's to fix (bad flags,
# config, paths, files) or a diverged run (FloatingPointError: non-finite loss, whose message
# says which checkpoint is intact).
_USER_ERRORS = (ValueError, FileNotFoundError, config_lib.ConfigError, FloatingPointError)


def user_errors() -> tuple[type[BaseException], ...]:
  from tarflow_flax import checkpoint  # pylint: disable=g-import-not-at-top
  return _USER_ERRORS + (checkpoint.CheckpointError,)


def initialize_distributed() -> None:
  """Joins the job's other processes (no-op for a single process); idempotent."""
  if jax.distributed.is_initialized() or _DISTRIBUTED.value is False:
    return
  explicit = (_COORDINATOR.value or _NUM_PROCESSES.value is not None
              or _PROCESS_ID.value is not None)
  if explicit or _DISTRIBUTED.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
    return
  try:  # Cloud TPU slices and GKE: every worker discovers the others by itself.
    jax.distributed.initialize()
  except (RuntimeError, ValueError) as e:  # A laptop or a single VM: nothing to join.
    logging.debug("Single-process job (jax.distributed not initialised: %s)", e)


# Library INFO logs that repeat what the jobs report themselves: Orbax's every save/restore step,
# gcsfs' cache set-up on every gs:// read, and CLU's console echo of every metric and of the
# hyperparameters (all in TensorBoard; the config is also in the workdir's config.json).
_CHATTY_LIBRARIES = (f"{os.sep}orbax{os.sep}", f"{os.sep}gcsfs{os.sep}",
                     os.path.join(f"{os.sep}clu", "metric_writers", "logging_writer.py"))


class _DropLibraryInfo(std_logging.Filter):
  """Shows the chatty libraries' INFO logs only at --verbosity=1 (DEBUG) or more."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.WARNING or logging.get_verbosity() >= logging.DEBUG:
      return True
    return not any(part in record.pathname for part in _CHATTY_LIBRARIES)


def quiet_library_logs() -> None:
  for handler in std_logging.getLogger().handlers + logging.get_absl_logger().handlers:
    if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
      handler.addFilter(_DropLibraryInfo())


def _exit_after_error(line: str) -> None:
  """Prints the job's one error line and exits 1 with nothing after it: what libraries print
  while Python shuts down (e.g. gcsfs' HTTP sessions closed on a stopped asyncio loop, "Event loop
  is closed" tracebacks) would only bury it, so stderr goes to /dev/null from here on."""
  print(line, file=sys.stderr, flush=True)
  sys.stdout.flush()
  os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
  sys.exit(1)


def run(job: Callable[[], Any]) -> None:
  """absl entry point of a job: `runtime.run(main)` with `main()` taking no arguments."""

  def main(argv):
    if len(argv) > 1:
      sys.exit(f"error: unexpected arguments {argv[1:]}")
    quiet_library_logs()
    try:
      initialize_distributed()
      job()
    except Interrupted as e:
      print(f"interrupted: {e}", file=sys.stderr, flush=True)
      sys.exit(EXIT_INTERRUPTED)
    except user_errors() as e:
      _exit_after_error(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}")

  app.run(main, flags_parser=cli.parse_flags)


def config_flags_given(prefix: str = "") -> str | None:
  """`--config=FILE[:preset] --config.<prefix>…=…` as this job was given them (to tell the user
  a command for the same config), or None when the job had no --config."""
  if "config" not in flags.FLAGS or not flags.FLAGS.is_parsed():
    return None
  flag = flags.FLAGS["config"]
  if not flag.present:
    return None
  overrides = [f"--config.{key}={value}" for key, value in flag.override_values.items()
               if key.startswith(prefix)]
  return " ".join([f"--config={flag.config_filename}", *overrides])


def checkpoint_root(workdir: str | None, checkpoint: str | None) -> epath.Path:
  """The checkpoint root of `--workdir` (its checkpoints/) or `--checkpoint` (exactly one)."""
  if bool(workdir) == bool(checkpoint):
    raise UserError("give exactly one of --workdir or --checkpoint")
  return path(checkpoint) if checkpoint else path(workdir) / "checkpoints"


def make_mesh(config) -> jax.sharding.Mesh:
  """The config's (data, fsdp) mesh over all global devices, or a one-line ConfigError."""
  from tarflow_flax import sharding  # pylint: disable=g-import-not-at-top
  try:
    return sharding.make_mesh(config.mesh)
  except ValueError as e:
    raise config_lib.ConfigError(f"{e} (this job has {jax.device_count()} devices in "
                                 f"{jax.process_count()} processes; set --config.mesh.*)") from e


class StopSignal:
  """SIGTERM (preemption, maintenance) and SIGINT (Ctrl-C) become a stop at an agreed step.

  With jax.distributed, JAX's preemption service owns SIGTERM: a notice reaching any one process
  is shared with all, and `should_stop(step)` turns True on every process at the same step (JAX's
  preemption sync point); SIGINT is forwarded to it as a SIGTERM. A single process handles both
  signals itself. `should_stop` must be called with the same step sequence on every process.
  """

  def __init__(self):
    self._local = False
    self._distributed = jax.distributed.is_initialized()
    self._previous = {}
    handled = [signal.SIGINT] if self._distributed else [signal.SIGINT, signal.SIGTERM]
    for signum in handled:
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:  # Not the main thread (e.g. a test calling train directly).
        pass

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self._distributed:
      logging.warning("%s received: passing it to all processes as a preemption notice.", name)
      os.kill(os.getpid(), signal.SIGTERM)
    else:
      logging.warning("%s received: stopping at the next step boundary.", name)
      self._local = True

  def should_stop(self, step: int) -> bool:
    if self._distributed:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._local

  def close(self) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
