"""Input pipeline: TFDS sources, grain iterators (per host, deterministic, resumable), device
prefetch. See pipeline.py for the determinism contract and sources.py for the datasets."""

from tarflow_flax.input_pipeline.pipeline import (create_eval_iterator, create_train_iterator,
                                                  prefetch_to_device, to_global_batch)
from tarflow_flax.input_pipeline.preprocessing import dequantize, to_unit_range
from tarflow_flax.input_pipeline.sources import DataError, check_split, data_source, prepare

__all__ = ["DataError", "check_split", "create_eval_iterator", "create_train_iterator", "data_source", "dequantize",
           "prefetch_to_device", "prepare", "to_global_batch", "to_unit_range"]
