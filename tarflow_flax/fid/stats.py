"""FID statistics: accumulated as torchmetrics does, read and written in three file formats.

Formats `load_statistics` reads (every path through etils.epath, so gs:// works):
- the reference's `*_fid_stats.pth` (ml-tarflow `prepare_fid_stats.py`: a torchmetrics FID
  state_dict with float64 `real_features_sum`, `real_features_cov_sum`, the count, and usually the
  Inception weights as `inception.*`), read without torch and without running pickled code;
- pytorch-fid / ADM `.npz` with only `mu` and `sigma`;
- this project's `.npz`: `mu`, `sigma`, `num_images`, `source`, `protocol`.
`save_statistics` writes this project's `.npz`, or the reference's `.pth` (all 572 keys, so that
the reference's `FID.load_state_dict(torch.load(path))` accepts it).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from etils import epath

from tarflow_flax import torch_io
from tarflow_flax.fid import inception, protocols

_REAL, _FAKE = "real_features", "fake_features"


@dataclasses.dataclass
class Statistics:
  mu: np.ndarray             # (D,) float64
  sigma: np.ndarray          # (D, D) float64
  num_images: int | None     # None when the file does not say (pytorch-fid / ADM .npz).
  source: str
  protocol: str | None       # The FID protocol the features were made with, when known.
  feature_sum: np.ndarray | None = None      # float64 sums, kept to write the reference format.
  feature_cov_sum: np.ndarray | None = None


class FeatureSums:
  """Streaming float64 Σf, Σfᵀf and count, exactly torchmetrics' FID update."""

  def __init__(self, dim: int = inception.FEATURES):
    self.sum = np.zeros(dim, np.float64)
    self.cov_sum = np.zeros((dim, dim), np.float64)
    self.count = 0

  def update(self, features) -> None:
    f = np.asarray(features, np.float32).astype(np.float64)
    self.sum += f.sum(axis=0)
    self.cov_sum += f.T @ f
    self.count += len(f)

  def statistics(self, *, source: str, protocol: str | None) -> Statistics:
    mu, sigma = moments_from_sums(self.sum, self.cov_sum, self.count)
    return Statistics(mu, sigma, self.count, source, protocol, self.sum, self.cov_sum)


def moments_from_sums(feature_sum, cov_sum, count: int) -> tuple[np.ndarray, np.ndarray]:
  """torchmetrics' one-pass unbiased form: mu = Σf/n, Σ = (Σfᵀf − n·mu muᵀ)/(n − 1)."""
  count = int(count)
  if count < 2:
    raise ValueError(f"FID statistics need at least 2 images, got {count}")
  mu = np.asarray(feature_sum, np.float64) / count
  return mu, (np.asarray(cov_sum, np.float64) - count * np.outer(mu, mu)) / (count - 1)


def _from_reference_pth(state: dict, path: str) -> Statistics:
  missing = [k for k in (f"{_REAL}_sum", f"{_REAL}_cov_sum", f"{_REAL}_num_samples")
             if k not in state]
  if missing:
    raise ValueError(f"{path}: a .pth FID statistics file needs {missing[0]!r} (the reference's "
                     "torchmetrics state_dict)")
  count = int(state[f"{_REAL}_num_samples"])
  mu, sigma = moments_from_sums(state[f"{_REAL}_sum"], state[f"{_REAL}_cov_sum"], count)
  return Statistics(mu, sigma, count, path, "reference", state[f"{_REAL}_sum"],
                    state[f"{_REAL}_cov_sum"])


def _from_npz(d, path: str) -> Statistics:
  if "mu" not in d.files or "sigma" not in d.files:
    raise ValueError(f"{path}: an .npz of FID statistics needs 'mu' and 'sigma' "
                     f"(found {sorted(d.files)})")
  num = int(d["num_images"]) if "num_images" in d.files else None
  source = str(d["source"]) if "source" in d.files else path
  protocol = str(d["protocol"]) if "protocol" in d.files else None
  return Statistics(np.asarray(d["mu"], np.float64), np.asarray(d["sigma"], np.float64), num,
                    source, protocol)


def load_statistics(path: str) -> Statistics:
  """Reads any of the three formats (see the module docstring)."""
  p = epath.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"no FID statistics at {path} (make them with "
                            "`python -m tarflow_flax.evaluate --metric=fid_stats ...`)")
  if p.suffix == ".pth":
    return _from_reference_pth(torch_io.load_torch_state_dict(p), path)
  with p.open("rb") as f, np.load(f) as d:
    return _from_npz(d, path)


def reference_state_dict(stats: Statistics, inception_state: dict | None) -> dict:
  """The reference's torchmetrics FID state_dict: real sums, zero fake states, Inception weights."""
  if stats.feature_sum is None or stats.feature_cov_sum is None:
    raise ValueError("the reference's .pth format stores feature sums; these statistics have none "
                     "(compute them here, or write .npz)")
  dim = len(stats.mu)
  state = {f"{_REAL}_sum": np.asarray(stats.feature_sum, np.float64),
           f"{_REAL}_cov_sum": np.asarray(stats.feature_cov_sum, np.float64),
           f"{_REAL}_num_samples": np.array(stats.num_images, np.int64),
           f"{_FAKE}_sum": np.zeros(dim, np.float64),
           f"{_FAKE}_cov_sum": np.zeros((dim, dim), np.float64),
           f"{_FAKE}_num_samples": np.array(0, np.int64)}
  for key, value in (inception_state or {}).items():
    state[inception.STATS_FILE_PREFIX + key] = value
    # Eval mode never reads the BN counters, but a strict load_state_dict wants every buffer.
    if key.endswith(".bn.running_var"):
      counter = key[:-len("running_var")] + "num_batches_tracked"
      if counter not in inception_state:
        state[inception.STATS_FILE_PREFIX + counter] = np.array(0, np.int64)
  return state


def save_statistics(path: str, stats: Statistics, inception_state: dict | None = None) -> None:
  """`.pth`: the reference's format (needs the feature sums; `inception_state` adds the weights
  under `inception.*` as the reference does); anything else: this project's `.npz`."""
  p = epath.Path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  with p.open("wb") as f:
    if p.suffix == ".pth":
      torch_io.save_torch_state_dict(reference_state_dict(stats, inception_state), f)
    else:
      np.savez(f, mu=stats.mu, sigma=stats.sigma, num_images=stats.num_images or 0,
               source=stats.source, protocol=stats.protocol or "")


def check_same_protocol(stats: Statistics, protocol: str) -> None:
  """Refuses to compare features of two different protocols (their FIDs are not comparable)."""
  protocols.check_protocol(protocol)
  if stats.protocol and stats.protocol != protocol:
    raise ValueError(f"the reference statistics {stats.source} were made with the "
                     f"{stats.protocol!r} FID protocol; pass --fid_protocol={stats.protocol} "
                     f"(got {protocol!r})")
