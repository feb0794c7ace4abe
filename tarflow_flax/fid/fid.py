"""FID: batched Inception features under a protocol, and the Fréchet distance between Gaussians.

FID = ||μ₁ − μ₂||² + Tr Σ₁ + Tr Σ₂ − 2·Tr (Σ₁Σ₂)^½ in float64. The trace of the square root is
taken as each protocol's library does: "reference" (torchmetrics) sums Re √λ over the eigenvalues
of the non-symmetric product; "pytorch_fid" uses scipy.linalg.sqrtm, retried with ε·I added to
both covariances when the product is singular.
"""

from __future__ import annotations

import json
from typing import Iterable

import jax
import numpy as np
import scipy.linalg
from etils import epath
from flax import nnx

from tarflow_flax.fid import inception, protocols, stats


def compute_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean and unbiased covariance of (N, D) features, in float64."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"need (N >= 2, D) features, got {features.shape}")
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _trace_sqrt_eigvals(product) -> float:
  return float(np.sum(np.sqrt(np.linalg.eigvals(product).astype(np.complex128)).real))


def _trace_sqrtm(sigma1, sigma2, eps: float) -> float:
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"sqrtm has a large imaginary part: {np.max(np.abs(covmean.imag))}")
    covmean = covmean.real
  return float(np.trace(covmean))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6,
                     protocol: str = "pytorch_fid") -> float:
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"statistics differ in shape: {mu1.shape}/{sigma1.shape} vs "
                     f"{mu2.shape}/{sigma2.shape}")
  diff = mu1 - mu2
  if protocols.check_protocol(protocol) == "reference":
    trace_sqrt = _trace_sqrt_eigvals(sigma1 @ sigma2)
  else:
    trace_sqrt = _trace_sqrtm(sigma1, sigma2, eps)
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


class FeatureExtractor:
  """Jitted Inception pool3 features of uint8 NHWC images under an FID protocol.

  Grayscale is repeated to RGB. The network is compiled once, for (batch_size, 299, 299, 3);
  the protocol's resize and normalisation are compiled once per input image size.
  """

  def __init__(self, model: inception.InceptionV3, batch_size: int = 64,
               protocol: str = protocols.DEFAULT_PROTOCOL):
    self.batch_size = batch_size
    self.protocol = protocols.check_protocol(protocol)
    graphdef, state = nnx.split(model)
    self._network = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    self._input = jax.jit(lambda x: protocols.inception_input(x, self.protocol))
    self._state = state

  def __call__(self, images_uint8) -> np.ndarray:
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8:
      raise ValueError(f"FeatureExtractor takes uint8 images (see fid.to_uint8), not {images.dtype}")
    if images.shape[-1] == 1:
      images = np.repeat(images, 3, axis=-1)
    out = []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start:start + self.batch_size]
      pad = self.batch_size - len(chunk)  # One compiled shape for every batch.
      x = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
      out.append(np.asarray(self._network(self._state, self._input(x)))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, inception.FEATURES), np.float32)

  def statistics(self, batches: Iterable[np.ndarray], source: str = "") -> stats.Statistics:
    """Streaming statistics (torchmetrics' float64 sums) of uint8 image batches."""
    sums = stats.FeatureSums()
    for batch in batches:
      sums.update(self(batch))
    return sums.statistics(source=source, protocol=self.protocol)


def fid_against(extractor: FeatureExtractor, batches: Iterable[np.ndarray],
                reference: stats.Statistics) -> tuple[float, stats.Statistics]:
  """FID of uint8 image batches against reference statistics made with the same protocol."""
  stats.check_same_protocol(reference, extractor.protocol)
  mine = extractor.statistics(batches)
  value = frechet_distance(mine.mu, mine.sigma, reference.mu, reference.sigma,
                           protocol=extractor.protocol)
  return value, mine


def sample_shards(directory: str) -> Iterable[np.ndarray]:
  """uint8 image batches from the sampling job's `shard_*.npz` files."""
  paths = sorted(epath.Path(directory).glob("shard_*.npz"))
  if not paths:
    raise FileNotFoundError(f"no shard_*.npz samples in {directory}")
  for path in paths:
    with path.open("rb") as f, np.load(f) as d:
      yield d["images"]


def sampling_settings(directory: str) -> dict:
  path = epath.Path(directory) / "sampling.json"
  return json.loads(path.read_text()) if path.exists() else {}
