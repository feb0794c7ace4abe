"""Input pipeline: TFDS sources, grain iterators (per host, deterministic, resumable), device
prefetch. Where things are: datasets.py (the dataset table), sources.py (building and reading
them), preprocessing.py (per example, on the host), pipeline.py (grain iterators and the
determinism contract), device_transforms.py (scaling and noise, on the device)."""

from tarflow_flax.input_pipeline.pipeline import (create_eval_iterator, create_train_iterator,
                                                  prefetch_to_device, to_global_batch)
from tarflow_flax.input_pipeline.sources import DataError, check_split, data_source, prepare

__all__ = ["DataError", "check_split", "create_eval_iterator", "create_train_iterator",
           "data_source", "prepare", "prefetch_to_device", "to_global_batch"]
