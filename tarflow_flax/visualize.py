"""Image grids for TensorBoard and PNG files."""

import io
import math

import numpy as np
from absl import logging
from etils import epath


def finite_samples(images, where: str) -> np.ndarray:
  """Samples with non-finite values (an inverse that overflowed) set to 0 (mid-grey), logged once:
  a diverged sample must show in the log, not as a cast warning or a silently black image."""
  images = np.asarray(images, np.float32)
  bad = ~np.isfinite(images).reshape(len(images), -1).all(axis=1)
  if bad.any():
    logging.warning("%s: %d of %d samples have non-finite values (shown as 0)", where,
                    int(bad.sum()), len(images))
  return np.nan_to_num(images, nan=0.0, posinf=0.0, neginf=0.0)


def to_uint8(images) -> np.ndarray:
  """[-1, 1] floats (clipped) → uint8, rounding to the nearest of 256 levels."""
  images = np.clip(np.asarray(images, np.float32), -1.0, 1.0)
  return np.round((images + 1.0) * 127.5).astype(np.uint8)


def make_grid(images, ncol: int | None = None, pad: int = 2, pad_value=128) -> np.ndarray:
  """(N, H, W, C) → one (rows·(H+pad)+pad, ncol·(W+pad)+pad, C) grid, same dtype.

  The padding is mid-grey by default so that it shows between digits on black backgrounds.
  """
  images = np.asarray(images)
  n, h, w, c = images.shape
  ncol = ncol or int(math.ceil(math.sqrt(n)))
  nrow = int(math.ceil(n / ncol))
  grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), pad_value, images.dtype)
  for i in range(n):
    r, col = divmod(i, ncol)
    top, left = pad + r * (h + pad), pad + col * (w + pad)
    grid[top:top + h, left:left + w] = images[i]
  return grid


def trace_grid(trace_uint8) -> np.ndarray:
  """A (N, steps, H, W, C) sampling trace → one grid image, one row per sample, one column per
  step (sampling/trace.py)."""
  n, steps = trace_uint8.shape[:2]
  return make_grid(np.reshape(trace_uint8, (n * steps,) + trace_uint8.shape[2:]), ncol=steps)


def save_png(path, image_uint8: np.ndarray) -> None:
  """Writes an HWC uint8 image as PNG to a local or gs:// path."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = image_uint8[..., 0] if image_uint8.shape[-1] == 1 else image_uint8
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  epath.Path(path).write_bytes(buffer.getvalue())
