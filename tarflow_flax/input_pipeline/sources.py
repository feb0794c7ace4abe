"""Random-access TFDS sources (ArrayRecord via `tfds.data_source`) selected by config.data.name.

The datasets, their TFDS builders and the archives a user provides are one table:
`input_pipeline/datasets.py` (docs/data.md has the user's view).

Nothing is downloaded. A local data_dir: a dataset not prepared there is built from manual_dir
once (ArrayRecord); in a multi-process job process 0 builds and the others wait for its result (the
distributed runtime's key-value store), then read; a process whose data_dir is not shared with
process 0 builds its own copy afterwards. A remote data_dir (gs://) is only ever read: a dataset not
prepared there (`python -m tarflow_flax.prepare`) stops every process at once with one line.
ArrayRecord files on gs:// are read by array_record's own GCS client. A missing or wrong manual
archive gives one error naming the file and what was expected (docs/data.md). User paths go
through etils.epath (manual_dir may be gs://).
"""

from __future__ import annotations

import os
import re
import time

import jax
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from tensorflow_datasets.core.download import download_manager

from tarflow_flax.input_pipeline import builders
from tarflow_flax.input_pipeline.datasets import DATASETS

# TFDS takes a dataset version folder as prepared once this file is there
# (tfds.core.utils.file_utils.is_valid_variant_dir): it is written, or uploaded, last.
PREPARED_MARKER = "dataset_info.json"
# How long the other processes wait for process 0's build (an ImageNet build takes hours).
BUILD_TIMEOUT_S = 24 * 3600


class DataError(ValueError):
  """A dataset that cannot be built or read; the message names the cause."""


def default_data_dir() -> str:
  """TFDS's own default: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return os.environ.get("TFDS_DATA_DIR") or os.fspath(
      epath.Path("~/tensorflow_datasets").expanduser())


def resolved_data_dir(data_config) -> str:
  return data_config.data_dir or default_data_dir()


def is_remote(data_dir) -> bool:
  """gs:// (any URL): jobs only read it; `python -m tarflow_flax.prepare` fills it."""
  return "://" in os.fspath(data_dir)


def builder_for(data_config, data_dir=None):
  """The TFDS builder of config.data (in `data_dir` instead of the config's, if given)."""
  data_dir = epath.Path(data_dir or resolved_data_dir(data_config))
  name = data_config.name
  if name == "image_folder":
    # One prepared copy per folder content: a changed folder gets a new build.
    listing = builders.scan_image_folder(data_config.manual_dir)
    return builders.ImageFolder(folder=data_config.manual_dir, listing=listing,
                                data_dir=data_dir / f"folder_{builders.fingerprint(listing)}",
                                file_format="array_record")
  if name not in DATASETS:
    raise ValueError(f"config.data.name={name!r}: unknown dataset; one of {sorted(DATASETS)}")
  dataset = DATASETS[name]
  if dataset.project_builder:
    return getattr(builders, dataset.project_builder)(data_dir=data_dir,
                                                      file_format="array_record")
  return tfds.builder(dataset.tfds_name, data_dir=data_dir, file_format="array_record")


def is_prepared(builder) -> bool:
  """TFDS's own test (builder.is_prepared()), without its warning for a folder not complete yet."""
  return (builder.data_path / PREPARED_MARKER).exists()


def expected_archives(builder) -> dict:
  """{file name: UrlInfo (size, sha256)} from the builder's checksums.tsv."""
  # imagenet2012's checksums.tsv has no file names: the URL's last part is the name.
  return {info.filename or url.rsplit("/", 1)[-1]: info
          for url, info in (type(builder).url_infos or {}).items()}


def _manual_files_text(name: str) -> str:
  *first, last = DATASETS[name].manual_files
  return f"{', '.join(first)} and {last}"


def _describe(info) -> str:
  return f"{int(info.size):,} bytes, sha256 {info.checksum}" if info else "see docs/data.md"


def check_manual_files(builder, data_config) -> None:
  """Every archive TFDS will look for in manual_dir is there at the size TFDS expects (TFDS itself
  checks the sha256 while building): else one line naming the file and what was expected."""
  name, manual_dir = data_config.name, data_config.manual_dir
  if not (manual_dir and epath.Path(manual_dir).is_dir()):
    raise FileNotFoundError(
        f"{name} is not prepared in {resolved_data_dir(data_config)} and "
        f"config.data.manual_dir={manual_dir!r} is not a directory: put "
        f"{_manual_files_text(name)} in a folder and pass --config.data.manual_dir=FOLDER")
  expected = expected_archives(builder)
  for file_name in DATASETS[name].manual_files:
    path, info = epath.Path(manual_dir) / file_name, expected.get(file_name)
    if not path.exists():
      raise FileNotFoundError(f"{name}: {path} is missing (expected {_describe(info)}; "
                              "docs/data.md says where to get it)")
    size = path.stat().length
    if info and size != int(info.size):
      raise DataError(f"{name}: {path} is {size:,} bytes, expected {_describe(info)}: not the "
                      "archive TFDS builds from (docs/data.md)")


def checksum_error(builder, data_config, error) -> DataError:
  """TFDS's many-line NonMatchingChecksumError as one line naming the file."""
  url = re.search(r"Artifact (\S+?),", str(error))
  file_name = url.group(1).rsplit("/", 1)[-1] if url else "an archive"
  info = expected_archives(builder).get(file_name)
  return DataError(f"{data_config.name}: {epath.Path(data_config.manual_dir) / file_name} has "
                   f"the wrong sha256 (expected {_describe(info)}): a different or damaged copy "
                   "(docs/data.md)")


def build(builder, data_config) -> None:
  """Builds `builder` into its (local) data_dir, in this process."""
  manual_dir = data_config.manual_dir
  dataset = DATASETS[data_config.name]
  if dataset.manual_files:
    check_manual_files(builder, data_config)
  logging.info("Building %s into %s", data_config.name, builder.data_path)
  config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
  started = time.time()
  try:
    builder.download_and_prepare(download_config=config, file_format="array_record")
  except download_manager.NonMatchingChecksumError as e:
    raise checksum_error(builder, data_config, e) from e
  except (FileNotFoundError, ValueError) as e:
    if str(e).startswith(f"{data_config.name}:"):  # Already names the dataset and the cause.
      raise
    raise DataError(f"could not build {data_config.name}: {type(e).__name__}: {str(e)[:300]}") \
        from e
  except Exception as e:
    if dataset.manual_files:
      what = f"from manual_dir={manual_dir!r} (expected {_manual_files_text(data_config.name)})"
    elif dataset.project_builder:
      what = f"into {builder.data_path}"
    else:
      what = ("by download (offline? prepare it elsewhere with `tfds build "
              f"{dataset.tfds_name} --file_format=array_record` and point "
              "config.data.data_dir at the copy)")
    raise DataError(f"could not build {data_config.name} {what}: "
                    f"{type(e).__name__}: {str(e)[:300]}") from e
  logging.info("Built %s in %.0f s", data_config.name, time.time() - started)


def _not_prepared(data_config) -> DataError:
  """The one line that stops a job on a remote data_dir without the dataset."""
  from tarflow_flax import runtime  # pylint: disable=g-import-not-at-top
  data_dir = resolved_data_dir(data_config)
  given = runtime.config_flags_given("data.")
  if given is None or "data_dir" not in given:  # E.g. evaluate with a checkpoint's config.
    given = (f"{given or '--config=CONFIG'} --config.data.name={data_config.name} "
             f"--config.data.data_dir={data_dir}")
  return DataError(f"{data_config.name} is not prepared in {data_dir}: run "
                   f"python -m tarflow_flax.prepare {given}")


def _distributed_client():
  """The jax.distributed runtime client (its key-value store), or None in a single process."""
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state.client if jax.process_count() > 1 else None


def prepare(data_config) -> None:
  """Builds the dataset into a local data_dir if it is not there yet; process 0 builds for the job.

  A remote data_dir is never built into: each process checks for itself that the dataset is
  prepared there (no waiting on another process) and stops with one line if not. In a
  multi-process job process 0 builds (or finds the dataset built) and publishes the outcome;
  the other processes wait for it and then read. A process whose data_dir is not shared with
  process 0 (e.g. a local disk per host) builds its own copy after that.
  """
  builder = builder_for(data_config)
  if is_remote(resolved_data_dir(data_config)):
    if not is_prepared(builder):
      raise _not_prepared(data_config)
    return
  client = _distributed_client()
  if client is None:
    if not is_prepared(builder):
      build(builder, data_config)
    return
  # The same key on every process even when their copies of an image folder differ.
  key = (f"tarflow_flax/data/{data_config.name}/{resolved_data_dir(data_config)}/"
         f"{data_config.manual_dir}")
  if jax.process_index() == 0:
    outcome = "ok"
    try:
      if not is_prepared(builder):
        build(builder, data_config)
    except Exception as e:  # Tell the others before failing, so that they do not wait.
      outcome = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
      raise
    finally:
      client.key_value_set(key, outcome, allow_overwrite=True)
    return
  outcome = client.blocking_key_value_get(key, BUILD_TIMEOUT_S * 1000)
  if outcome != "ok":
    raise DataError(f"process 0 could not prepare {data_config.name}: {outcome}")
  builder = builder_for(data_config)  # Afresh: the first one was made before process 0 built.
  if not is_prepared(builder):
    logging.info("%s: data_dir not shared with process 0; building a copy for this process",
                 data_config.name)
    build(builder, data_config)


def _base_split(split: str) -> str:
  return split.split("[")[0]  # 'train[:10%]' → 'train'.


def check_split(data_config, split: str) -> None:
  """Raises a one-line ValueError if the dataset has no split `split`; builds nothing.

  Answered from the prepared dataset's info when it is there, else from the builder's known
  splits (the folder layout for image_folder).
  """
  builder = builder_for(data_config)
  if is_prepared(builder):
    known = list(builder.info.splits)
  elif data_config.name == "image_folder":
    known = list(builders.scan_image_folder(data_config.manual_dir))
  else:
    known = list(DATASETS[data_config.name].splits)
  if known and _base_split(split) not in known:  # Empty under tfds mock_data: nothing to check.
    raise ValueError(f"{data_config.name} has no split {split!r}; it has {sorted(known)} "
                     "(set --config.data.eval_split / train_split)")


def data_source(data_config, split: str):
  """A random-access source of {'image': uint8 HWC, 'label': int} for `split`."""
  prepare(data_config)
  builder = builder_for(data_config)
  known = list(builder.info.splits)  # Empty when unknown (e.g. under tfds mock_data).
  if known and _base_split(split) not in known:
    raise ValueError(f"{data_config.name} has no split {split!r}; it has {sorted(known)}")
  source = builder.as_data_source(split=split)
  if len(source) == 0:
    raise DataError(f"{data_config.name} split {split!r} is empty")
  return source, builder.info
