"""The researcher's outputs: a training run's profile, W&B run (offline), sample grids and
sampling trace as PNGs; the sample job's trace.png."""

import glob
import io
import json
import os
import struct

import numpy as np
from PIL import Image

from conftest import tiny_config, tiny_model
from tarflow_flax import checkpoint, sample, train, wandb_writer


def _tensorboard_images(logdir, tag):
  """{step: decoded uint8 image} of a TensorBoard image tag."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"tensors": 0})
  acc.Reload()
  return {e.step: np.asarray(Image.open(io.BytesIO(tensor_util.make_ndarray(e.tensor_proto)[2])))
          for e in acc.Tensors(tag)}


def _read_wandb_records(path):
  """The Record protos of a W&B run file (`run-<id>.wandb`: a LevelDB-style log of 32 KiB blocks,
  after a 7-byte file header; each chunk has a 7-byte header: crc, length, type)."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top
  data, block, pos, pending, records = open(path, "rb").read(), 32768, 7, b"", []
  assert data.startswith(b":W&B")
  while pos + 7 <= len(data):
    if block - pos % block < 7:  # A block's tail too short for a chunk header is padding.
      pos += block - pos % block
      continue
    _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
    pending += data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):  # FULL or LAST chunk: a record is complete.
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      records.append(record)
      pending = b""
  return records


def _offline_runs(workdir):
  """[(run id, summary, history steps)] of the W&B offline runs in `workdir`, oldest first."""
  runs = []
  for folder in sorted(glob.glob(os.path.join(workdir, "wandb", "offline-run-*"))):
    run_id, summary, steps = None, {}, []
    for record in _read_wandb_records(glob.glob(os.path.join(folder, "*.wandb"))[0]):
      kind = record.WhichOneof("record_type")
      if kind == "run":
        run_id = record.run.run_id
      elif kind == "summary":
        summary.update({"/".join(u.nested_key) or u.key: json.loads(u.value_json)
                        for u in record.summary.update})
      elif kind == "history":
        steps += [json.loads(i.value_json) for i in record.history.item
                  if (i.key or "/".join(i.nested_key)) == "_step"]
    runs.append((run_id, summary, steps))
  return runs


def test_tiny_run_leaves_profile_wandb_run_and_sample_pngs_and_resumes_the_wandb_run(
    tmp_path, monkeypatch):
  monkeypatch.setenv("WANDB_MODE", "offline")
  overrides = {"num_train_steps": 4, "log_every_steps": 2, "checkpoint_every_steps": 2,
               "sample_every_steps": 2, "sample.num_images": 4, "profile_steps": (2, 3),
               "sample_trace": 2, "wandb_project": "tarflow-test"}
  train.train_and_evaluate(tiny_config(**overrides), str(tmp_path))

  traces = glob.glob(str(tmp_path / "plugins" / "profile" / "*" / "*.xplane.pb"))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0

  logged = _tensorboard_images(tmp_path, "samples")
  assert sorted(logged) == [2, 4]
  for step, grid in logged.items():
    png = np.asarray(Image.open(tmp_path / "samples" / f"step_{step}.png"))
    np.testing.assert_array_equal(png, grid)

  # The trace: a row per sample; noise, one column per block (2), the denoised sample. Its last
  # column is the grid's first images (same latents, the same sequential sampler).
  trace = _tensorboard_images(tmp_path, "trace")[4]
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "trace" / "step_4.png")), trace)
  cell = 16 + 2  # Image size + grid padding.
  assert trace.shape == (2 * cell + 2, 4 * cell + 2)
  for row in range(2):
    top = 2 + row * cell
    last = trace[top:top + 16, 2 + 3 * cell:2 + 3 * cell + 16]
    in_grid = logged[4][2:18, 2 + row * cell:2 + row * cell + 16]  # Grid of 4: 2 per row.
    assert np.abs(last.astype(int) - in_grid).max() <= 1
    assert np.abs(last.astype(int) - trace[top:top + 16, 2:18]).max() > 10  # Not the noise.

  run_id = (tmp_path / wandb_writer.RUN_ID_FILE).read_text()
  (first_id, summary, steps), = _offline_runs(tmp_path)
  assert first_id == run_id and steps == [2, 4]
  assert np.isfinite(summary["train/loss"]) and summary["samples/_type"] == "image-file"

  # Rerunning with more steps resumes the checkpoint and appends to the same W&B run.
  train.train_and_evaluate(tiny_config(**{**overrides, "num_train_steps": 6}), str(tmp_path))
  runs = _offline_runs(tmp_path)
  assert [run[0] for run in runs] == [run_id, run_id] and runs[1][2] == [6]


def test_sample_job_trace_has_noise_a_column_per_block_and_the_results(tmp_path):
  config = tiny_config(**{"model.num_classes": 3})  # Denoises (Gaussian noise): 4 columns.
  model = tiny_model(in_channels=1, img_size=16, patch_size=4, num_blocks=2, layers_per_block=1,
                     num_classes=3)
  checkpoint.save_model_checkpoint(str(tmp_path / "ckpt"), model, config)
  outdir = tmp_path / "out"
  sample.run_job(tmp_path / "ckpt", sample.Options(outdir=str(outdir), num_samples=3,
                                                   shard_size=3, classes=(2, 0, 1), trace=True))

  trace = np.asarray(Image.open(outdir / "trace.png"))
  grid = np.asarray(Image.open(outdir / "grid.png"))  # The 3 samples side by side.
  cell = 16 + 2
  assert trace.shape == (3 * cell + 2, 4 * cell + 2)
  for row in range(3):  # The last column is the denoised sample, as stored.
    last = trace[2 + row * cell:2 + row * cell + 16, 2 + 3 * cell:2 + 3 * cell + 16]
    stored = grid[2:18, 2 + row * cell:2 + row * cell + 16]
    assert np.abs(last.astype(int) - stored).max() <= 1
