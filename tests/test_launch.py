"""Launch scripts: `--dry-run` prints the right commands; every script passes shellcheck."""

import glob
import os
import shutil
import subprocess

import pytest

from conftest import REPO

SCRIPTS = sorted(glob.glob(os.path.join(REPO, "launch", "*.sh")))


def _dry(script, *args):
  result = subprocess.run(["bash", os.path.join(REPO, "launch", script), "--dry-run", *args],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": "/usr/bin:/bin"})  # No gcloud needed.
  assert result.returncode == 0, result.stderr
  return result.stdout


def test_create_uses_queued_resources():
  out = _dry("tpu_create.sh", "--tpu=tf1", "--accelerator=v5litepod-64", "--zone=us-west4-a",
             "--project=p", "--spot")
  assert "gcloud compute tpus queued-resources create tf1 --node-id=tf1 --project=p" in out
  assert "--accelerator-type=v5litepod-64" in out and "--spot" in out


def test_train_runs_on_all_workers_with_gs_workdir():
  out = _dry("tpu_train.sh", "--tpu=tf1", "--config=configs/imagenet64.py:likelihood",
             "--workdir=gs://bucket/in64", "--config.batch_size=512")
  assert "gcloud compute tpus tpu-vm ssh tf1" in out and "--worker=all" in out
  assert "python3\\ -m\\ tarflow_flax.main" in out
  assert "--config=configs/imagenet64.py:likelihood" in out and "gs://bucket/in64" in out
  assert "--config.batch_size=512" in out


def test_install_sample_evaluate_tensorboard_gpu():
  assert "tpu-vm scp --recurse" in _dry("tpu_install.sh") and "jax\\[tpu\\]" in _dry(
      "tpu_install.sh")
  out = _dry("tpu_sample.sh", "--workdir=gs://b/r", "--num_samples=100", "--outdir=gs://b/s")
  assert "tarflow_flax.sample" in out and "--num_samples=100" in out and "--worker=all" in out
  out = _dry("tpu_evaluate.sh", "--workdir=gs://b/r", "--metric=bpd")
  assert "tarflow_flax.evaluate" in out and "--metric=bpd" in out
  assert "tensorboard --logdir=gs://b/r" in _dry("tpu_tensorboard.sh", "--workdir=gs://b/r")
  out = _dry("gpu_host.sh", "--workdir=/runs/x")
  assert "jax\\[cuda12\\]" in out and "tarflow_flax.main" in out
  assert "queued-resources delete" in _dry("tpu_delete.sh")


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_passes():
  result = subprocess.run(["shellcheck", "-x", "-P", "SCRIPTDIR", *SCRIPTS], capture_output=True,
                          text=True, cwd=os.path.join(REPO, "launch"))
  assert result.returncode == 0, result.stdout
