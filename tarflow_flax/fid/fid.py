"""FID: Inception statistics (mean, covariance) and the Fréchet distance between two Gaussians.

FID = ||μ₁ − μ₂||² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½), in float64; the matrix square root by
scipy.linalg.sqrtm, retried with ε·I added to both covariances when the product is singular.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from flax import nnx

from tarflow_flax.fid import inception


def compute_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"need (N >= 2, D) features, got {features.shape}")
  return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"statistics differ in shape: {mu1.shape}/{sigma1.shape} vs "
                     f"{mu2.shape}/{sigma2.shape}")
  diff = mu1 - mu2
  covmean, _ = scipy.linalg.sqrtm(sigma1 @ sigma2, disp=False)
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"sqrtm has a large imaginary part: {np.max(np.abs(covmean.imag))}")
    covmean = covmean.real
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def save_statistics(path: str, mu, sigma, *, num_images: int, source: str) -> None:
  np.savez(path, mu=mu, sigma=sigma, num_images=num_images, source=source)


def load_statistics(path: str):
  if not os.path.exists(path):
    raise FileNotFoundError(f"no FID statistics at {path} (make them with "
                            "`python -m tarflow_flax.evaluate --metric=fid_stats ...`)")
  with np.load(path) as d:
    return d["mu"], d["sigma"], {"num_images": int(d["num_images"]), "source": str(d["source"])}


class FeatureExtractor:
  """Batched, jitted Inception features of uint8 NHWC images (grayscale is repeated to RGB)."""

  def __init__(self, model: inception.InceptionV3, batch_size: int = 64):
    self.batch_size = batch_size
    graphdef, state = nnx.split(model)
    self._apply = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    self._state = state

  def __call__(self, images_uint8) -> np.ndarray:
    images = np.asarray(images_uint8)
    if images.shape[-1] == 1:
      images = np.repeat(images, 3, axis=-1)
    out = []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start:start + self.batch_size]
      pad = self.batch_size - len(chunk)  # One compiled shape for every batch.
      x = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
      x = jnp.asarray(x, jnp.float32) / 127.5 - 1.0
      out.append(np.asarray(self._apply(self._state, x))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, inception.FEATURES), np.float32)

  def statistics(self, batches: Iterable[np.ndarray]):
    feats = np.concatenate([self(b) for b in batches])
    mu, sigma = compute_statistics(feats)
    return mu, sigma, len(feats)


def sample_shards(directory: str) -> Iterable[np.ndarray]:
  """uint8 image batches from the sampling job's `shard_*.npz` files."""
  paths = sorted(glob.glob(os.path.join(directory, "shard_*.npz")))
  if not paths:
    raise FileNotFoundError(f"no shard_*.npz samples in {directory}")
  for path in paths:
    with np.load(path) as d:
      yield d["images"]


def sampling_settings(directory: str) -> dict:
  path = os.path.join(directory, "sampling.json")
  return json.load(open(path)) if os.path.exists(path) else {}
