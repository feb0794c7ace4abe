"""User errors end every job with one line naming the cause, exit status 1, nothing overwritten."""

import os
import subprocess
import sys
import tempfile

import pytest
from absl import flags

from conftest import GOLDEN_DIR, REPO, job_env, tiny_config
from tarflow_flax import cli, job_flags, train

TINY = os.path.join(REPO, "configs", "tiny.py")
MISSING = os.path.join(tempfile.gettempdir(), "no-such-folder", "config.py")


def _start(module, *args, devices=1):
  return subprocess.Popen([sys.executable, "-m", f"tarflow_flax.{module}", *args], cwd=REPO,
                          env=job_env(devices),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _assert_one_line_error(proc, message: str) -> None:
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 1, out[-3000:]
  assert "Traceback" not in out, out[-3000:]
  errors = [line for line in out.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and message in errors[0], out[-3000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny run's workdir with a checkpoint at step 2 (trained in this process: what is tested
  is the jobs started against it)."""
  workdir = tmp_path_factory.mktemp("run")
  train.train_and_evaluate(tiny_config(num_train_steps=2), str(workdir))
  return workdir


def test_training_start_errors(tmp_path, trained):
  config_json = (trained / "config.json").read_text()
  empty = tmp_path / "empty"
  empty.mkdir()
  cases = [
      (_start("main", "--config=" + os.path.join(REPO, "configs", "imagenet64.py"),
              f"--workdir={tmp_path / 'a'}"),
       "config.mesh: fsdp=4 needs a multiple of 4 devices, not 1"),
      (_start("main", f"--config={TINY}", f"--workdir={tmp_path / 'b'}", "--config.nonexistent=1"),
       "unknown config key 'nonexistent'"),
      (_start("main", f"--config={TINY}", f"--workdir={tmp_path / 'c'}",
              "--config.data.name=image_folder", f"--config.data.manual_dir={empty}"),
       f"no class subfolders in {empty}"),
      (_start("main", f"--config={TINY}", f"--workdir={tmp_path / 'd'}",
              "--config.eval_every_steps=5", "--config.data.eval_split=nope"),
       "has no split 'nope'"),
      # Resuming with another model names the keys instead of advising to delete checkpoints.
      (_start("main", f"--config={TINY}", f"--workdir={trained}", "--config.model.channels=128"),
       "is of another model: it differs in channels"),
  ]
  for proc, message in cases:
    _assert_one_line_error(proc, message)
  assert (trained / "config.json").read_text() == config_json  # Not overwritten by the failure.
  assert not any((tmp_path / d / "config.json").exists() for d in "abcd")


def test_convert_errors(tmp_path, trained):
  pth = os.path.join(GOLDEN_DIR, "uncond_small.pth")
  truncated = tmp_path / "truncated.pth"
  truncated.write_bytes(open(pth, "rb").read()[:5000])
  cases = [
      (_start("convert", f"--pth={truncated}", f"--config={TINY}", f"--out={tmp_path / 'x'}"),
       str(truncated)),
      (_start("convert", f"--pth={pth}", f"--config={TINY}", f"--out={tmp_path / 'y'}"),
       "unexpected key"),  # The tiny config is not the golden model.
      (_start("convert", f"--pth={pth}", f"--config={TINY}", f"--out={trained}"),
       "is not empty"),
  ]
  for proc, message in cases:
    _assert_one_line_error(proc, message)
  assert sorted(os.listdir(trained / "checkpoints")) == ["2"]


def _parse(argv, cwd=REPO):
  """The one `error:` line of cli.parse_flags on a job's flags (--config, required --workdir)."""
  argv = ["job", *argv]
  flag_values = flags.FlagValues()
  job_flags.define_config("", flag_values=flag_values, sys_argv=argv)  # The jobs' --config.
  flags.DEFINE_string("workdir", None, "", flag_values=flag_values)
  flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)
  old = os.getcwd()
  os.chdir(cwd)
  try:
    cli.parse_flags(argv, flag_values)
  except SystemExit as e:
    return e.code
  finally:
    os.chdir(old)
  return None


@pytest.mark.parametrize("argv, expected", [
    (["--config=configs/defualt.py", "--workdir=w"],
     f"error: config file configs/defualt.py not found (relative to the current directory {REPO})"
     f"; the shipped configs are in {REPO}/configs"),
    # Its overrides are unknown flags too: the file is what to fix.
    (["--config=configs/defualt.py", "--workdir=w", "--config.batch_size=2"],
     "error: config file configs/defualt.py not found"),
    ([f"--config={MISSING}", "--workdir=w"],
     f"error: config file {MISSING} not found; the shipped configs are in {REPO}/configs"),
    (["--config=configs", "--workdir=w"], "error: cannot read config file configs (relative"),
    (["--config=configs/imagenet64.py:nope", "--workdir=w"],
     "error: --config=configs/imagenet64.py:nope: unknown preset 'nope' (choose"),
    (["--config=configs/tiny.py:nope", "--workdir=w"],
     "error: --config=configs/tiny.py:nope: this config has no presets"),
    (["--config=configs/tiny.py", "--workdir=w", "--config.learning_rat=1"],
     "error: unknown config key 'learning_rat' in --config.learning_rat: did you mean "
     "'learning_rate'?"),
    (["--config=configs/tiny.py", "--workdir=w", "--config.model.chanels=1"],
     "error: unknown config key 'chanels' in --config.model.chanels: did you mean 'channels'?"),
    (["--config=configs/tiny.py", "--workdir=w", "--config.nothing.x=1"],
     "error: unknown config key 'nothing' in --config.nothing.x"),
    (["--config=configs/tiny.py"], "error: missing required flag --workdir (see --help)"),
    (["--workdir=w"], "error: missing required flag --config (see --help)"),
])
def test_command_line_errors_are_one_line(argv, expected):
  message = _parse(argv)
  assert isinstance(message, str) and message.startswith(expected), message
  assert "\n" not in message and "\\" not in message, message


def test_config_path_relative_to_another_directory(tmp_path):
  """Run from outside the repository, the shipped config's relative path says where it looked."""
  assert _parse(["--config=configs/default.py", "--workdir=w"], cwd=tmp_path) == (
      f"error: config file configs/default.py not found (relative to the current directory "
      f"{tmp_path}); the shipped configs are in {REPO}/configs")
  assert _parse([f"--config={REPO}/configs/tiny.py", "--workdir=w"], cwd=tmp_path) is None


def test_job_error_and_help_from_the_command_line(tmp_path):
  """Exit statuses and stream shapes of a real job: one stderr line for an error, help on
  stdout with the config notes and exit 0."""
  env = job_env(1)
  env.pop("JAX_PLATFORMS", None)  # As a user runs it (libtpu installed: the test extra).
  error = subprocess.run([sys.executable, "-m", "tarflow_flax.main", "--config=configs/defualt.py",
                          f"--workdir={tmp_path}"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
  assert error.returncode == 1 and error.stdout == "", (error.stdout, error.stderr)
  assert error.stderr.splitlines() == [
      f"error: config file configs/defualt.py not found (relative to the current directory "
      f"{tmp_path}); the shipped configs are in {REPO}/configs"], error.stderr
  usage = subprocess.run([sys.executable, "-m", "tarflow_flax.sample", "--help"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
  assert usage.returncode == 0, usage.stderr
  assert "--config.KEY=VALUE" in usage.stdout and f"{REPO}/configs" in usage.stdout
  assert "--outdir" in usage.stdout and usage.stderr == "", usage.stderr


def test_nothing_follows_a_jobs_error_line(tmp_path):
  """Whatever libraries print while Python shuts down (here: an exit handler writing to stderr,
  as gcsfs' closing HTTP sessions do) does not follow the job's error line."""
  script = ("import atexit, runpy, sys\n"
            "atexit.register(lambda: print('late noise', file=sys.stderr, flush=True))\n"
            "sys.argv = ['sample', '--checkpoint=/unused', '--outdir=/unused', '--num_samples=0']\n"
            "runpy.run_module('tarflow_flax.sample', run_name='__main__')\n")
  proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=job_env(1),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert proc.stderr.splitlines() == ["error: --num_samples and --shard_size must be >= 1"], \
      proc.stderr[-2000:]
