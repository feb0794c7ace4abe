"""The batch sampling job: shards, resume after SIGKILL without duplicates, refusal of mixing."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, job_env, tiny_config, tiny_model
from tarflow_flax import checkpoint, runtime, sample


# The killed job runs on four fake CPU devices (shards of 3 samples padded to a global batch of
# 4), the jobs run in this process on eight (padded to 8): the shards must not differ.
DEVICES = 4


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  root = tmp_path_factory.mktemp("ckpt")
  config = tiny_config(**{"model.num_classes": 3, "sample.denoise": False})
  model = tiny_model(in_channels=1, img_size=16, patch_size=4, num_blocks=2, layers_per_block=1,
                     num_classes=3)
  checkpoint.save_model_checkpoint(str(root), model, config)
  return root


def _job(ckpt, outdir, *extra):
  cmd = [sys.executable, "-m", "tarflow_flax.sample", f"--checkpoint={ckpt}", f"--outdir={outdir}",
         "--num_samples=10", "--shard_size=3", *extra]
  return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=job_env(DEVICES))


def _run(ckpt, outdir, **options):
  """The job in this process; its number of shards."""
  return sample.run_job(ckpt, sample.Options(**{"outdir": str(outdir), "num_samples": 10,
                                                "shard_size": 3, **options}))


def _shards(outdir):
  return sorted(f for f in os.listdir(outdir) if f.startswith("shard_"))


def test_killed_job_resumes_to_exactly_n_samples(ckpt, tmp_path):
  assert _run(ckpt, tmp_path / "straight") == 4

  killed = _job(ckpt, tmp_path / "killed")
  start = time.time()
  while len(_shards(tmp_path / "killed") if (tmp_path / "killed").exists() else []) < 2:
    assert killed.poll() is None, killed.stdout.read()[-2000:]
    assert time.time() - start < 240
    time.sleep(0.05)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  assert len(_shards(tmp_path / "killed")) < 4
  resumed = _job(ckpt, tmp_path / "killed")
  out, _ = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, out[-2000:]

  assert _shards(tmp_path / "killed") == _shards(tmp_path / "straight") == [
      f"shard_{i:05d}.npz" for i in range(4)]
  for name in _shards(tmp_path / "straight"):
    a, b = np.load(tmp_path / "straight" / name), np.load(tmp_path / "killed" / name)
    np.testing.assert_array_equal(a["images"], b["images"])
    np.testing.assert_array_equal(a["labels"], b["labels"])
    assert a["images"].dtype == np.uint8 and a["images"].shape == (1 if name.endswith("3.npz")
                                                                   else 3, 16, 16, 1)
  labels = np.concatenate([np.load(tmp_path / "straight" / n)["labels"]
                           for n in _shards(tmp_path / "straight")])
  assert labels.tolist() == [i % 3 for i in range(10)]  # Class-balanced.
  assert (tmp_path / "straight" / "grid.png").exists()
  assert not [f for f in os.listdir(tmp_path / "killed") if f.endswith(".tmp")]

  with pytest.raises(runtime.UserError,
                     match=re.escape("holds samples of another run (differs in ['seed'])")):
    _run(ckpt, tmp_path / "straight", seed=1)


def test_auto_calibrates_once_per_job_and_a_resumed_job_reuses_the_plan(ckpt, tmp_path, caplog):
  with caplog.at_level(logging.INFO):
    _run(ckpt, tmp_path, method="auto", num_samples=6)
  assert "auto plan per block (sampling order)" in caplog.text
  first = json.loads((tmp_path / "sampling.json").read_text())
  assert first["auto_plan"]["blocks"] and first["auto_plan"]["plans"]
  shard = np.load(tmp_path / "shard_00001.npz")["images"]
  os.remove(tmp_path / "shard_00001.npz")

  _run(ckpt, tmp_path, method="auto", num_samples=6)
  # A second calibration would have measured other timings: the stored plan was reused.
  assert json.loads((tmp_path / "sampling.json").read_text()) == first
  np.testing.assert_array_equal(np.load(tmp_path / "shard_00001.npz")["images"], shard)
