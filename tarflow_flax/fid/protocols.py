"""The two FID input protocols: how images in [-1, 1] become the Inception's 299x299 input.

- "reference": what ml-tarflow's `utils.FID` does (torchmetrics `FrechetInceptionDistance(
  normalize=True)` over torch-fidelity's Inception), so numbers compare with the paper and the
  public retrained models: uint8 by truncation of float32 0.5·(x+1)·255; TF1-style bilinear resize
  to 299 (src = dst·in/299 in float32, no half-pixel centres); then (v − 128)/128.
- "pytorch_fid": pytorch-fid's file path: uint8 rounded, u = u8/255, bilinear resize with
  half-pixel centres (torch `interpolate(align_corners=False)`), then 2u − 1.

Features under the two protocols differ by ~6e-3 relative at 32–64 px (measured against the real
libraries, see tests/data/golden/fid), so an FID is only comparable with FIDs of the same protocol.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

PROTOCOLS = ("reference", "pytorch_fid")
DEFAULT_PROTOCOL = "reference"
INPUT_SIZE = 299


def check_protocol(protocol: str) -> str:
  if protocol not in PROTOCOLS:
    raise ValueError(f"unknown FID protocol {protocol!r}: use one of {PROTOCOLS}")
  return protocol


def to_uint8(images, protocol: str = DEFAULT_PROTOCOL) -> np.ndarray:
  """Samples in [-1, 1] (clipped first, as the reference) → uint8 as the protocol converts them."""
  x = np.clip(np.asarray(images, np.float32), np.float32(-1), np.float32(1))
  if check_protocol(protocol) == "reference":
    # torch: (0.5 * (x + 1)) * 255 in float32, then `.byte()`, which truncates.
    return (((x + np.float32(1)) * np.float32(0.5)) * np.float32(255)).astype(np.uint8)
  return np.round((x + np.float32(1)) * np.float32(127.5)).astype(np.uint8)


def dataset_uint8(images_uint8, protocol: str = DEFAULT_PROTOCOL) -> np.ndarray:
  """Dataset images as the protocol feeds them. The reference loads them as ToTensor (k/255) +
  Normalize(0.5, 0.5) and converts back by truncation, which turns k = 1…63 into k − 1."""
  images = np.asarray(images_uint8, np.uint8)
  if check_protocol(protocol) == "pytorch_fid":
    return images
  unit = images.astype(np.float32) / np.float32(255)
  return to_uint8((unit - np.float32(0.5)) / np.float32(0.5), protocol)


def _tf1_taps(size_in: int, size_out: int):
  """Source rows of TF1's legacy bilinear resize: src = dst·(in/out) in float32, no offset."""
  src = np.arange(size_out, dtype=np.float32) * np.float32(size_in / size_out)
  lo = np.floor(src).astype(np.int32)
  hi = np.minimum(lo + 1, size_in - 1)
  return lo, hi, src - lo.astype(np.float32)


def _half_pixel_taps(size_in: int, size_out: int):
  """Source rows of torch's bilinear `align_corners=False`: half-pixel centres, clamped at 0."""
  scale = np.float32(size_in / size_out)
  src = np.maximum((np.arange(size_out, dtype=np.float32) + np.float32(0.5)) * scale
                   - np.float32(0.5), np.float32(0))
  lo = np.floor(src).astype(np.int32)
  hi = np.minimum(lo + 1, size_in - 1)
  return lo, hi, src - lo.astype(np.float32)


def _lerp_axis(x, axis: int, taps):
  lo, hi, t = taps
  shape = [1] * x.ndim
  shape[axis] = len(t)
  a, b = jnp.take(x, lo, axis=axis), jnp.take(x, hi, axis=axis)
  return a + (b - a) * jnp.asarray(t).reshape(shape)


def resize_bilinear(x, size: int, half_pixel: bool):
  """(N, H, W, C) float32 → (N, size, size, C): along x first, then y, as a + (b − a)·t."""
  taps = _half_pixel_taps if half_pixel else _tf1_taps
  x = _lerp_axis(x, 2, taps(x.shape[2], size))
  return _lerp_axis(x, 1, taps(x.shape[1], size))


def inception_input(images_uint8, protocol: str):
  """uint8 NHWC RGB images → the (N, 299, 299, 3) float32 Inception input of the protocol."""
  x = jnp.asarray(images_uint8).astype(jnp.float32)
  if check_protocol(protocol) == "reference":
    x = resize_bilinear(x, INPUT_SIZE, half_pixel=False)
    return (x - 128.0) / 128.0
  x = resize_bilinear(x / 255.0, INPUT_SIZE, half_pixel=True)
  return 2.0 * x - 1.0
