"""Datasets in a bucket: prepared once with `tarflow_flax.prepare`, read by every process of a job.

Against the GCS emulator (conftest's `gcs`): an upload interrupted midway leaves nothing that looks
prepared and a rerun completes it without building again; a 2-process training job reads the
bucket with the losses of a local data_dir and writes nothing there; bits/dim from the bucket
equals bits/dim from a local data_dir; an unprepared bucket stops both processes of a job at once
with one line. Missing or wrong manual archives are named in one line.
"""

import json
import os

import numpy as np
import pytest
from etils import epath

from conftest import (BUCKET, free_port, gcs_objects, read_scalars, start_job, tiny_config,
                      tiny_flags, wait_job)
from tarflow_flax import prepare_lib, train
from tarflow_flax.input_pipeline import sources, upload
from tensorflow_datasets.core.download import download_manager

DATA_DIR = f"gs://{BUCKET}/tfds"
TRAIN = {"num_train_steps": 4, "log_every_steps": 1}


@pytest.fixture
def gcs_here(gcs, monkeypatch):
  """This process's gs:// clients pointed at the emulator, for one test. etils.epath caches its
  choice of TensorFlow's GCS client (which cannot be pointed at an emulator) when EPATH_USE_TF is
  unset: that cache is cleared when the variable changes."""
  from etils.epath import gpath  # pylint: disable=g-import-not-at-top
  for key, value in gcs.items():
    monkeypatch.setenv(key, value)
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
  yield gcs
  monkeypatch.undo()
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access


def test_prepare_resumes_an_interrupted_upload_then_jobs_read_the_bucket(gcs_here, tmp_path,
                                                                         monkeypatch, capsys):
  gcs = gcs_here
  data = tiny_config(**{"data.data_dir": DATA_DIR}).data
  # The staging folder is the tests' TFDS data dir, where conftest built the dataset already.
  copy_file, copied = upload.copy_file, []

  def fail_on_third_file(source, dest, on_chunk):
    if len(copied) == 2:
      raise ConnectionResetError("injected: connection reset by peer")
    copy_file(source, dest, on_chunk)
    copied.append(source.name)

  monkeypatch.setattr(upload, "copy_file", fail_on_third_file)
  with pytest.raises(sources.DataError, match="rerun the same command to continue"):
    prepare_lib.prepare_dataset(data)
  partial = gcs_objects(gcs, "tfds/")
  assert len(partial) == 2 and not any(name.endswith("dataset_info.json") for name in partial)
  assert not sources.is_prepared(sources.builder_for(data))
  with pytest.raises(sources.DataError, match=f"^mnist_embedded is not prepared in {DATA_DIR}: "):
    sources.data_source(data, "train")

  monkeypatch.setattr(upload, "copy_file", copy_file)
  capsys.readouterr()
  prepare_lib.prepare_dataset(data)
  out = capsys.readouterr().out
  assert "already built" in out  # The staged build was reused, not built again.
  assert not any(line.startswith("building") for line in out.splitlines())
  assert "uploaded 2 files" in out and "2 files" in out.split("uploaded 2 files")[1]
  assert "train: 4,500 examples" in out and "test: 500 examples" in out
  assert out.splitlines()[-1].startswith(f"done: mnist_embedded is prepared in {DATA_DIR}")
  prepare_lib.prepare_dataset(data)
  assert "already prepared" in capsys.readouterr().out
  prepared = gcs_objects(gcs, "tfds/")
  assert len(prepared) == 4 and set(partial) < set(prepared)

  # Two processes train from the bucket; the reference trains here from the local data_dir.
  port, workdir = free_port(), tmp_path / "run"
  flags = (*tiny_flags(**TRAIN), f"--config.data.data_dir={DATA_DIR}", f"--workdir={workdir}")
  logs = [tmp_path / f"train{i}.log" for i in range(2)]
  jobs = [start_job("main", logs[i], *flags, devices=1, process=(i, 2, port), env=gcs)
          for i in range(2)]
  train.train_and_evaluate(tiny_config(**TRAIN), str(tmp_path / "local"))
  assert [wait_job(job, log) for job, log in zip(jobs, logs)] == [0, 0], logs[0].read_text()[-3000:]
  want = read_scalars(tmp_path / "local")["train/loss"]
  got = read_scalars(workdir)["train/loss"]
  assert sorted(got) == sorted(want) == [1, 2, 3, 4]
  np.testing.assert_allclose([got[s] for s in want], [want[s] for s in want], rtol=1e-5)

  # Bits/dim of that checkpoint: its stored config reads the bucket; --config reads locally.
  evaluate = (f"--workdir={workdir}", "--metric=bpd", "--num_batches=2")
  runs = {"bucket": evaluate, "local": (*evaluate, tiny_flags()[0])}
  jobs = {where: start_job("evaluate", tmp_path / f"{where}.log", *args,
                           f"--out={tmp_path / where}.json", devices=1, env=gcs)
          for where, args in runs.items()}
  for where, job in jobs.items():
    assert wait_job(job, tmp_path / f"{where}.log") == 0, (tmp_path / f"{where}.log").read_text()
  bpd = {where: json.loads((tmp_path / f"{where}.json").read_text()) for where in runs}
  assert bpd["bucket"]["num_images"] == bpd["local"]["num_images"] == 16
  assert np.isfinite(bpd["bucket"]["bpd"]) and bpd["bucket"]["bpd"] == bpd["local"]["bpd"]
  assert gcs_objects(gcs, "tfds/") == prepared  # The jobs wrote nothing into the data_dir.


def test_an_unprepared_bucket_stops_every_process_with_one_line(gcs, tmp_path):
  data_dir = f"gs://{BUCKET}/unprepared"
  config_flags = (*tiny_flags(), f"--config.data.data_dir={data_dir}")
  port = free_port()
  logs = [tmp_path / f"p{i}.log" for i in range(2)]
  jobs = [start_job("main", logs[i], *config_flags, f"--workdir={tmp_path / 'run'}", devices=1,
                    process=(i, 2, port), env=gcs) for i in range(2)]
  # Each process finds out for itself: neither waits for the other (nor 24 h for a build).
  assert [wait_job(job, log, timeout=120) for job, log in zip(jobs, logs)] == [1, 1]
  want = (f"error: mnist_embedded is not prepared in {data_dir}: run python -m "
          f"tarflow_flax.prepare {' '.join(config_flags)}")
  for log in logs:
    assert log.read_text().rstrip().splitlines()[-1] == want, log.read_text()[-3000:]
  assert gcs_objects(gcs, "unprepared") == []


def test_a_stopped_upload_leaves_the_marker_out_and_the_next_one_completes(tmp_path):
  source, dest = epath.Path(tmp_path) / "built", epath.Path(tmp_path) / "bucket"
  (source / "sub").mkdir(parents=True)
  for name, size in [(upload.PREPARED_MARKER, 10), ("a.array_record", 3 * 2**20),
                     ("sub/b.json", 5), ("z.array_record", 7)]:
    (source / name).write_bytes(os.urandom(size))
  lines, polls = [], iter(range(3))
  summary = upload.upload(source, dest, report=lines.append,
                          should_stop=lambda: next(polls, None) is None)
  assert summary.copied_files == 1 and not (dest / upload.PREPARED_MARKER).exists()
  summary = upload.upload(source, dest, report=lines.append)
  assert (summary.skipped_files, summary.copied_files) == (2, 2)
  assert lines[-1].endswith(f"{upload.PREPARED_MARKER} (10 B)")  # Last.
  for name in [upload.PREPARED_MARKER, "a.array_record", "sub/b.json", "z.array_record"]:
    assert (dest / name).read_bytes() == (source / name).read_bytes()


def _manual_config(tmp_path, name):
  (tmp_path / "manual").mkdir(exist_ok=True)
  return tiny_config(**{"data.name": name, "data.manual_dir": str(tmp_path / "manual"),
                        "data.data_dir": str(tmp_path / "tfds")}).data


def test_missing_or_wrong_manual_archives_are_named_in_one_line(tmp_path):
  manual = tmp_path / "manual"
  data = _manual_config(tmp_path, "imagenet_resized")
  with pytest.raises(FileNotFoundError) as missing:
    sources.data_source(data, "train")
  assert str(missing.value) == (
      f"imagenet_resized: {manual}/Imagenet64_train_part1_npz.zip is missing (expected "
      "6,783,426,789 bytes, sha256 "
      "9422dc1dc5d092e9814a70a1cb7fc74880d2db5d88a0cb8a34ee363b12bde3f1; docs/data.md says where "
      "to get it)")

  data = _manual_config(tmp_path, "downsampled_imagenet")
  (manual / "train_64x64.tar").write_bytes(b"not a tar")
  with pytest.raises(sources.DataError) as wrong:
    sources.data_source(data, "train")
  assert str(wrong.value) == (
      f"downsampled_imagenet: {manual}/train_64x64.tar is 9 bytes, expected 12,112,588,800 bytes, "
      "sha256 e2a2c1947a748d0d256e98e6d82800d855441dc9e4de2e71a773f1324c4524d7: not the archive "
      "TFDS builds from (docs/data.md)")
  assert not (tmp_path / "tfds" / "downsampled_imagenet").exists()  # Stopped before building.

  # Right size, other bytes: TFDS's many-line checksum error, as one line naming the file.
  builder = sources.builder_for(data)
  url = "http://image-net.org/small/valid_64x64.tar"
  error = download_manager.NonMatchingChecksumError(
      f"Artifact {url}, downloaded to {manual}/valid_64x64.tar, has wrong checksum:\n"
      "* Expected: UrlInfo(...)\n* Got: UrlInfo(...)\n")
  assert str(sources.checksum_error(builder, data, error)) == (
      f"downsampled_imagenet: {manual}/valid_64x64.tar has the wrong sha256 (expected "
      "477,255,680 bytes, sha256 eeac03ec4f585baf871d2b4cb9c974bfe345e74878a74e5820fe6eb1041629cd):"
      " a different or damaged copy (docs/data.md)")
