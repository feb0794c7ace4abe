"""FID: Inception-v3 features in Flax NNX (torch-layout weights), two input protocols, statistics
files in the reference's, pytorch-fid's and this project's formats, and the Fréchet distance."""

from tarflow_flax.fid.fid import (FeatureExtractor, compute_statistics, fid_against,
                                  frechet_distance, sample_shards, sampling_settings)
from tarflow_flax.fid.inception import InceptionV3, from_pth, load_torch_weights, read_state_dict
from tarflow_flax.fid.protocols import DEFAULT_PROTOCOL, PROTOCOLS, dataset_uint8, to_uint8
from tarflow_flax.fid.stats import (FeatureSums, Statistics, load_statistics, moments_from_sums,
                                    save_statistics)

__all__ = ["DEFAULT_PROTOCOL", "FeatureExtractor", "FeatureSums", "InceptionV3", "PROTOCOLS",
           "Statistics", "compute_statistics", "dataset_uint8", "fid_against", "frechet_distance",
           "from_pth", "load_statistics", "load_torch_weights", "moments_from_sums", "read_state_dict",
           "sample_shards", "sampling_settings", "save_statistics", "to_uint8"]
