"""Prepare job: makes the config's dataset ready in config.data.data_dir, local or gs://.

  python -m tarflow_flax.prepare --config=configs/imagenet64.py:likelihood \
      --config.data.manual_dir=/archives --config.data.data_dir=gs://BUCKET/tfds [--staging_dir=DIR]

A local data_dir: the dataset is built there (what a job would otherwise do on first use).
A remote data_dir (gs://): the dataset is built in --staging_dir (a local folder; default TFDS's
data dir) and uploaded, `dataset_info.json` last, so the bucket never holds a dataset that looks
prepared but is not. Rerunning after an interruption reuses the local build and uploads only what
is missing; on a complete bucket it changes nothing. Then every split is opened from data_dir: one
line per split (examples, bytes) and a final `done:` line.

One process on any machine, CPU only (it never joins a slice's other workers): a CPU VM in the
bucket's region is the place for ImageNet. Exit status: 0 done, 1 an error (one line), 75 stopped
by SIGTERM / SIGINT: the same command continues.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from tarflow_flax import runtime
from tarflow_flax.input_pipeline import sources, upload

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:preset]); "
                                          "its config.data says what to prepare and where.",
                                          lock_config=True)
_STAGING_DIR = flags.DEFINE_string(
    "staging_dir", None, "Local folder in which a dataset for a gs:// data_dir is built before the "
    "upload (default: $TFDS_DATA_DIR or ~/tensorflow_datasets). Keep it until `done:`: a rerun "
    "uploads from it instead of building again.")
flags.mark_flags_as_required(["config"])
# Preparing is one process's work: never wait for (or start) a slice's other workers.
flags.FLAGS.set_default("distributed", False)


def _say(line: str) -> None:
  print(line, flush=True)


def _build_here(builder, data_config) -> None:
  if sources.is_prepared(builder):
    _say(f"{data_config.name} is already built in {builder.data_path}: not building it again")
    return
  _say(f"building {data_config.name} into {builder.data_path} (hours for ImageNet)")
  sources.build(builder, data_config)


def _upload(local, remote, data_config) -> None:
  """Uploads the local build `local` to `remote`'s place; Interrupted on SIGTERM / SIGINT."""
  with runtime.StopSignal() as stop:
    try:
      summary = upload.upload(local.data_path, remote.data_path, report=_say,
                              should_stop=lambda: stop.should_stop(0))
    except OSError as e:
      raise sources.DataError(f"uploading {data_config.name} to {remote.data_path} failed: "
                              f"{type(e).__name__}: {e}; rerun the same command to continue") from e
    if stop.should_stop(0):
      raise runtime.Interrupted(f"upload of {data_config.name} to {remote.data_path} stopped "
                                "before it was complete: rerun the same command to continue")
  _say(f"uploaded {summary.copied_files} files ({upload.human_bytes(summary.copied_bytes)}); "
       f"{summary.skipped_files} files ({upload.human_bytes(summary.skipped_bytes)}) were there "
       "already")


def prepare_dataset(data_config, staging_dir: str | None = None) -> None:
  """Makes `data_config`'s dataset ready in its data_dir (see the module docstring)."""
  data_dir = sources.resolved_data_dir(data_config)
  target = sources.builder_for(data_config)
  if not sources.is_remote(data_dir):
    _build_here(target, data_config)
  elif sources.is_prepared(target):
    _say(f"{data_config.name} is already prepared in {target.data_path}: nothing to build or "
         "upload")
  else:
    staging = runtime.path(staging_dir or sources.default_data_dir())
    if sources.is_remote(staging):
      raise ValueError(f"--staging_dir={staging_dir}: must be a local folder (TFDS's ArrayRecord "
                       "writer opens local files)")
    local = sources.builder_for(data_config, staging)
    _build_here(local, data_config)
    _upload(local, target, data_config)
  check_prepared(data_config)


def check_prepared(data_config) -> None:
  """Opens every split from data_dir, reads its first and last example, prints one line each."""
  builder = sources.builder_for(data_config)
  if not sources.is_prepared(builder):
    raise sources.DataError(f"{data_config.name} is not prepared in {builder.data_path} after "
                            "preparing it: rerun the same command")
  for split, info in builder.info.splits.items():
    source = builder.as_data_source(split=split)
    if len(source) != info.num_examples:
      raise sources.DataError(f"{data_config.name} split {split!r} in {builder.data_path} has "
                              f"{len(source)} examples, its dataset_info.json says "
                              f"{info.num_examples}: rerun the same command")
    source[0], source[len(source) - 1]  # pylint: disable=pointless-statement
    stored = sum(path.stat().length for path in info.filepaths)
    _say(f"{split}: {len(source):,} examples, {upload.human_bytes(stored)}")
  data_dir = sources.resolved_data_dir(data_config)
  _say(f"done: {data_config.name} is prepared in {data_dir}; jobs read it with "
       f"--config.data.data_dir={data_dir}")


def main() -> None:
  prepare_dataset(_CONFIG.value.data, _STAGING_DIR.value)


if __name__ == "__main__":
  runtime.run(main)
