"""User errors end every job with one line naming the cause, exit status 1, nothing overwritten."""

import os
import subprocess
import sys

import pytest

from conftest import GOLDEN_DIR, REPO, job_env, tiny_config
from tarflow_flax import train

TINY = os.path.join(REPO, "configs", "tiny.py")


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
