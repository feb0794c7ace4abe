"""Random-access TFDS sources (ArrayRecord via `tfds.data_source`) selected by config.data.name.

| config.data.name      | TFDS builder                          | files the user provides (manual_dir) |
|-----------------------|---------------------------------------|--------------------------------------|
| mnist_embedded        | project builder, ships with the package | nothing                            |
| downsampled_imagenet  | `downsampled_imagenet/64x64` (van den Oord et al., the bits/dim benchmark) | train_64x64.tar, valid_64x64.tar |
| imagenet2012          | `imagenet2012`                        | ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar |
| imagenet_resized      | `imagenet_resized/64x64` (Chrabaszcz et al.) | Imagenet64_train_part1/2.zip, Imagenet64_val.zip |
| cifar10               | `cifar10`                             | a prepared TFDS data_dir (no download here) |
| image_folder          | project builder                       | one subfolder per class              |

Nothing is downloaded: a dataset that is not prepared in data_dir is built from manual_dir once
(ArrayRecord), and a missing file gives one error naming what to put where.
"""

from __future__ import annotations

import hashlib
import os

import tensorflow_datasets as tfds

from tarflow_flax.input_pipeline import builders

_TFDS_NAMES = {
    "downsampled_imagenet": "downsampled_imagenet/64x64",
    "imagenet2012": "imagenet2012",
    "imagenet_resized": "imagenet_resized/64x64",
    "cifar10": "cifar10",
}
_PROJECT_BUILDERS = {"mnist_embedded": builders.MnistEmbedded,
                     "image_folder": builders.ImageFolder}
_MANUAL_FILES = {
    "downsampled_imagenet": "train_64x64.tar and valid_64x64.tar",
    "imagenet2012": "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar",
    "imagenet_resized": "the Imagenet64 train/val npz archives",
}


def default_data_dir() -> str:
  """TFDS's own default: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"),
                                                          "tensorflow_datasets")


def _builder(data_config):
  data_dir = data_config.data_dir or default_data_dir()
  name = data_config.name
  if name == "image_folder":
    # One prepared copy per source folder.
    folder = os.path.abspath(data_config.manual_dir) if data_config.manual_dir else None
    tag = hashlib.sha1(str(folder).encode()).hexdigest()[:10]
    return builders.ImageFolder(folder=folder, data_dir=os.path.join(data_dir, f"folder_{tag}"),
                                file_format="array_record")
  if name in _PROJECT_BUILDERS:
    return _PROJECT_BUILDERS[name](data_dir=data_dir, file_format="array_record")
  if name not in _TFDS_NAMES:
    raise ValueError(f"config.data.name={name!r}: unknown dataset; one of "
                     f"{sorted(list(_TFDS_NAMES) + list(_PROJECT_BUILDERS))}")
  return tfds.builder(_TFDS_NAMES[name], data_dir=data_dir, file_format="array_record")


def prepare(data_config) -> None:
  """Builds the dataset into data_dir from the package or manual_dir if it is not there yet."""
  builder = _builder(data_config)
  if builder.is_prepared():
    return
  manual_dir = data_config.manual_dir
  if data_config.name in _MANUAL_FILES and not (manual_dir and os.path.isdir(manual_dir)):
    raise FileNotFoundError(
        f"{data_config.name} is not prepared in {data_config.data_dir or default_data_dir()} and "
        f"config.data.manual_dir={manual_dir!r} is not a directory: put "
        f"{_MANUAL_FILES[data_config.name]} in a folder and pass --config.data.manual_dir=FOLDER")
  config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
  try:
    builder.download_and_prepare(download_config=config, file_format="array_record")
  except FileNotFoundError:
    raise
  except Exception as e:
    what = (f"from manual_dir={manual_dir!r} (expected {_MANUAL_FILES[data_config.name]})"
            if data_config.name in _MANUAL_FILES else
            "by download (offline? prepare it elsewhere with `tfds build "
            f"{_TFDS_NAMES.get(data_config.name, data_config.name)} --file_format=array_record` "
            "and point config.data.data_dir at the copy)")
    raise RuntimeError(f"could not build {data_config.name} {what}: "
                       f"{type(e).__name__}: {str(e)[:300]}") from e


def data_source(data_config, split: str):
  """A random-access source of {'image': uint8 HWC, 'label': int} for `split`."""
  prepare(data_config)
  builder = _builder(data_config)
  known = list(builder.info.splits)  # Empty when unknown (e.g. under tfds mock_data).
  if known and split.split("[")[0] not in known:
    raise ValueError(f"{data_config.name} has no split {split!r}; it has {sorted(known)}")
  source = builder.as_data_source(split=split)
  if len(source) == 0:
    raise ValueError(f"{data_config.name} split {split!r} is empty")
  return source, builder.info
