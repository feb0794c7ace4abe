"""gs:// workdirs end to end, against a real GCS emulator (fake-gcs-server) on 127.0.0.1.

Training checkpoints into gs://, is SIGKILLed, resumes from the bucket with the losses of an
uninterrupted run; the sample job writes its shards, grid and settings into the bucket; evaluation
reads the bucket's checkpoint and gives the bits/dim of a local copy. No local `gs:` folder appears.
TensorFlow's own GCS client (TensorBoard events) cannot be pointed at an emulator, so the events
go to a local `config.metrics_dir`.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

from conftest import BUCKET, job_env, read_scalars, tiny_config, tiny_flags
from conftest import gcs_objects as _objects
from tarflow_flax import train


def _download(env, prefix: str, dest: pathlib.Path) -> None:
  """Copies the bucket's objects under `prefix` into `dest` (the emulator's JSON API: gcsfs in
  this process would first probe for a gRPC endpoint and retry for minutes)."""
  for name in _objects(env, prefix):
    target = dest / name[len(prefix):]
    target.parent.mkdir(parents=True, exist_ok=True)
    url = (f"{env['STORAGE_EMULATOR_HOST']}/storage/v1/b/{BUCKET}/o/"
           f"{urllib.parse.quote(name, safe='')}?alt=media")
    with urllib.request.urlopen(url, timeout=10) as response:
      target.write_bytes(response.read())


def _job(module, cwd, env, *args):
  os.makedirs(cwd, exist_ok=True)
  return subprocess.Popen([sys.executable, "-m", f"tarflow_flax.{module}", *args], cwd=cwd,
                          # One device: the bucket is what this test is about (jobs start faster).
                          env=job_env(1, **env),
                          stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=300) -> str:
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out[-3000:]
  return out


def test_train_resume_sample_and_evaluate_on_gs(gcs, tmp_path):
  cwd = tmp_path / "cwd"
  overrides = {"num_train_steps": 6, "log_every_steps": 1, "checkpoint_every_steps": 2}
  flags = tiny_flags(**overrides)
  run = f"gs://{BUCKET}/run"
  metrics = f"--config.metrics_dir={tmp_path / 'events'}"
  killed = _job("main", cwd, gcs, *flags, f"--workdir={run}", metrics)
  deadline = time.time() + 240
  while "run/checkpoints/2/commit_success.txt" not in _objects(gcs, "run/checkpoints/2/"):
    assert killed.poll() is None, killed.stdout.read()[-3000:]
    assert time.time() < deadline, "no checkpoint 2 in the bucket"
    time.sleep(0.2)
  killed.send_signal(signal.SIGKILL)
  assert killed.wait() == -signal.SIGKILL  # Killed mid-run, not finished.
  out = _finish(_job("main", cwd, gcs, *flags, f"--workdir={run}", metrics))
  assert f"Resumed from {run}/checkpoints step" in out
  # The uninterrupted run, in this process on a local workdir (its 8 devices: sharded == unsharded).
  train.train_and_evaluate(tiny_config(**overrides), str(tmp_path / "local"))
  want = read_scalars(tmp_path / "local")["train/loss"]
  got = read_scalars(tmp_path / "events")["train/loss"]
  assert sorted(got) == sorted(want) == list(range(1, 7))
  np.testing.assert_allclose([got[s] for s in want], [want[s] for s in want], rtol=1e-5)
  assert "run/config.json" in _objects(gcs, "run/")

  out = _finish(_job("sample", cwd, gcs, f"--workdir={run}", f"--outdir=gs://{BUCKET}/samples",
                     "--num_samples=5", "--shard_size=4"))
  assert "wrote 5 samples in 2 shards" in out
  assert _objects(gcs, "samples/") == ["samples/grid.png", "samples/sampling.json",
                                       "samples/shard_00000.npz", "samples/shard_00001.npz"]

  # Evaluation from the bucket and from a local copy of the same checkpoint.
  _download(gcs, "run/checkpoints/6/", tmp_path / "copy" / "6")
  results = []
  for where in [f"--workdir={run}", f"--checkpoint={tmp_path / 'copy'}"]:
    out = _finish(_job("evaluate", cwd, gcs, where, "--metric=bpd", "--num_batches=2",
                       f"--out={tmp_path / 'bpd.json'}"))
    results.append(json.loads((tmp_path / "bpd.json").read_text())["bpd"])
  assert np.isfinite(results[0]) and results[0] == results[1]
  assert not (cwd / "gs:").exists() and os.listdir(cwd) == []
