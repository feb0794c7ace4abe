"""Decode → resize/crop → flip → label dropout on the host (uint8 images; with `data.cond_key`,
the continuous condition → float32 (cond_dim,), dropped to NaN). Scaling to [-1, 1] and the noise
happen on the device (device_transforms.py).

Resizing follows the reference loader (torchvision Resize(size) + CenterCrop(size) on PIL images):
the shorter side is resized to `image_size` with antialiased bilinear filtering, then the centre is
cropped. Images already of the right size are untouched (lossless). 28x28 MNIST digits are padded
with 2 black pixels per side to 32x32 first, the usual way to fit them to a power of two.
"""

from __future__ import annotations

import numpy as np


def resize_and_crop(image: np.ndarray, size: int) -> np.ndarray:
  """Shorter side → size (antialiased bilinear), centre crop to size×size; uint8 HWC."""
  h, w = image.shape[:2]
  if (h, w) == (28, 28) and size != 28:
    image = np.pad(image, ((2, 2), (2, 2), (0, 0)))
    h, w = 32, 32
  if (h, w) == (size, size):
    return image
  from PIL import Image  # pylint: disable=g-import-not-at-top
  scale = size / min(h, w)
  new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
  squeeze = image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if squeeze else image)
  pil = pil.resize((new_w, new_h), Image.BILINEAR, reducing_gap=None)
  top, left = (new_h - size) // 2, (new_w - size) // 2
  out = np.asarray(pil)[top:top + size, left:left + size]
  return out[..., None] if squeeze else out


class Preprocessor:
  """Per-example preprocessing for one config and dataset."""

  def __init__(self, config, info):
    self.size = config.image_size
    self.channels = config.model.in_channels
    self.data = config.data
    self.conditional = config.model.num_classes > 0
    self.cond_key, self.cond_dim = config.data.cond_key, config.model.cond_dim
    if self.cond_key and self.cond_key not in info.features:
      raise ValueError(f"config.data.cond_key={self.cond_key!r}: {config.data.name} has no such "
                       f"feature (it has {sorted(info.features.keys())})")
    shape = info.features["image"].shape
    self.source_channels = shape[-1] if shape and shape[-1] else 3
    if self.source_channels not in (1, self.channels):
      raise ValueError(f"config.model.in_channels={self.channels} does not fit the "
                       f"{self.source_channels}-channel images of {config.data.name}")
    if self.conditional and "label" in info.features:
      num = info.features["label"].num_classes
      if num != config.model.num_classes:
        raise ValueError(f"config.model.num_classes={config.model.num_classes}, but "
                         f"{config.data.name} has {num} classes")

  def _image(self, example) -> np.ndarray:
    image = np.asarray(example["image"])
    if image.ndim == 2:
      image = image[..., None]
    image = resize_and_crop(image, self.size)
    if image.shape[-1] != self.channels:  # Grayscale → RGB by repetition.
      image = np.repeat(image, self.channels, axis=-1)
    return image

  def eval_example(self, example):
    return self._image(example), np.int32(example.get("label", 0))

  def train_example(self, example, rng: np.random.Generator, index: int):
    """uint8 image (flipped at random), label (dropped at random), and the example's global
    index (from which the device draws its noise)."""
    image = self._image(example)
    if self.data.random_flip and rng.random() < 0.5:
      image = image[:, ::-1]
    label = np.int32(example.get("label", 0)) if self.conditional else np.int32(0)
    if self.conditional and rng.random() < self.data.drop_label:
      label = np.int32(-1)
    # uint32: the noise stream repeats after 2^32 examples (thousands of ImageNet epochs).
    out = {"image": np.ascontiguousarray(image), "label": label,
           "index": np.uint32(index % 2**32)}
    if self.cond_key:
      out["cond"] = self.continuous_condition(example)
      if rng.random() < self.data.drop_label:  # NaN selects the model's null embedding.
        out["cond"] = np.full_like(out["cond"], np.nan)
    return out

  def continuous_condition(self, example) -> np.ndarray:
    """The example's `cond_key` feature as float32 (cond_dim,)."""
    value = np.asarray(example[self.cond_key], np.float32).reshape(-1)
    if value.shape != (self.cond_dim,):
      raise ValueError(f"config.data.cond_key={self.cond_key!r} has {value.size} values per "
                       f"example, config.model.cond_dim={self.cond_dim}")
    return value
