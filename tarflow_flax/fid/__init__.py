"""FID: Inception-v3 features in Flax NNX (weights from a torch `.pth`), statistics, distance."""

from tarflow_flax.fid.fid import (FeatureExtractor, compute_statistics, frechet_distance,
                                  load_statistics, sample_shards, save_statistics)
from tarflow_flax.fid.inception import InceptionV3, from_pth, load_torch_weights

__all__ = ["FeatureExtractor", "InceptionV3", "compute_statistics", "frechet_distance",
           "from_pth", "load_statistics", "load_torch_weights", "sample_shards",
           "save_statistics"]
