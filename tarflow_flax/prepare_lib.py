"""Making a dataset ready in a data_dir, local or remote (the prepare job's work; see prepare.py).

A local data_dir: the dataset is built there. A remote one (gs://): built in a local staging folder,
then uploaded (input_pipeline/upload.py: `dataset_info.json` last, files already there skipped).
Then every split is opened from the data_dir and reported in one line, and a final `done:` line.
"""

from __future__ import annotations

from tarflow_flax import runtime
from tarflow_flax.input_pipeline import sources, upload


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
