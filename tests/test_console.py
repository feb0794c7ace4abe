"""What a user sees: a tiny training run on a CPU host with libtpu installed (the test extra) is
quiet (no TPU probing, no library echo) and says what it is doing and what to do next."""

import glob
import importlib.util
import os
import re
import subprocess
import sys
import tempfile

from conftest import REPO, job_env, tiny_config, tiny_flags
from tarflow_flax import train

ALARMING = re.compile(r"INVALID_ARGUMENT|jellyfish|Source Location Trace|host bounds")


def test_tiny_training_run_console(tmp_path, monkeypatch):
  assert importlib.util.find_spec("libtpu"), "libtpu missing: install the test extra, .[test]"
  job_tmp = tmp_path / "tmp"
  job_tmp.mkdir()
  env = job_env(1, TMPDIR=str(job_tmp), TFDS_DATA_DIR=str(tmp_path / "tfds"))  # A first build.
  env.pop("JAX_PLATFORMS")  # As a user runs it: the job decides.
  workdir = tmp_path / "run"
  proc = subprocess.Popen(
      [sys.executable, "-m", "tarflow_flax.main", *tiny_flags(num_train_steps=4, log_every_steps=2),
       f"--workdir={workdir}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  lines = (out + err).splitlines()
  alarming = [line for line in lines if ALARMING.search(line)]
  assert not alarming, alarming[:5]
  assert not (job_tmp / "tpu_logs").exists()
  libtpu_logs = os.path.join(tempfile.gettempdir(), "tpu_logs", f"*.{proc.pid}")
  assert not glob.glob(libtpu_logs) and not glob.glob(f"/tmp/tpu_logs/*.{proc.pid}")
  # No library echo of metrics or hyperparameters, no laptop-irrelevant distributed notice, no
  # TFDS download claim for the embedded digits.
  for noise in ("logging_writer.py", "Hyperparameters", "perf/images_per_sec=", "Single-process",
                "final metrics", "Downloading and preparing"):
    assert noise not in out + err, noise
  # The first step's compilation is announced, then steps with speed and time left.
  compiling = next(i for i, line in enumerate(lines) if "Compiling the training step" in line)
  first_step = next(i for i, line in enumerate(lines) if re.search(r"step 2/4 .* img/s", line))
  assert compiling < first_step
  assert re.search(r"step 4/4 .* \d+\.\d img/s  00:00:\d\d left", err), err[-2000:]
  assert (workdir / "config.json").exists()
  assert out.splitlines() == train.done_message(
      tiny_config(num_train_steps=4, log_every_steps=2), str(workdir)).splitlines()


def test_done_message_says_where_everything_is_and_what_next():
  config = tiny_config(num_train_steps=7, sample_every_steps=5, metrics_dir="/events/run")
  lines = train.done_message(config, "/runs/a").splitlines()
  assert lines[0] == "done: trained to step 7; checkpoints and config.json in /runs/a"
  assert "sample grids" in lines[1] and lines[1].endswith("tensorboard --logdir /events/run")
  assert "python -m tarflow_flax.sample --workdir=/runs/a --outdir=/runs/a/samples" in lines[2]
  assert "python -m tarflow_flax.evaluate --workdir=/runs/a --metric=bpd" in lines[3]
  assert "classify" not in lines[3]
  assert "sample grids" not in train.done_message(tiny_config(), "/runs/a")
  assert "--metric=classify" in train.done_message(
      tiny_config(**{"model.num_classes": 10}), "/runs/a")
