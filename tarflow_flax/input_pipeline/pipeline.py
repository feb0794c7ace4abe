"""Deterministic, resumable, per-host input with grain.

The global stream is a function of config.seed only: the split is shuffled (a new permutation per
epoch) and cut into global batches of `config.batch_size`; process p of P reads rows
[p·B/P, (p+1)·B/P) of every global batch. Shares are disjoint, and a P-process run sees exactly the
batches of a one-process run. Random preprocessing (flip, noise, label dropout) draws from a
generator keyed by (seed, global position), so it is identical however the work is split.
The iterator state is grain's (a few bytes: the next index), saved with every checkpoint.
"""

from __future__ import annotations

import collections
import os
import threading

import grain
import jax
import numpy as np

from tarflow_flax.input_pipeline import preprocessing, sources

_NOISE_SALT = 0x7A2F  # Separates the preprocessing stream from the shuffle stream.
_ENDLESS = 2**40


def _process(process_index, process_count):
  return (jax.process_index() if process_index is None else process_index,
          jax.process_count() if process_count is None else process_count)


def _local_batch(config, process_count: int) -> int:
  if config.batch_size % process_count:
    raise ValueError(f"config.batch_size={config.batch_size} must be divisible by the "
                     f"{process_count} processes")
  return config.batch_size // process_count


class _Rows:
  """Maps a process's local index to its position in the global stream (and reads it there)."""

  def __init__(self, stream, global_batch: int, local_batch: int, process_index: int):
    self.stream, self.global_batch = stream, global_batch
    self.local_batch, self.process_index = local_batch, process_index

  def global_position(self, i: int) -> int:
    batch, row = divmod(i, self.local_batch)
    return batch * self.global_batch + self.process_index * self.local_batch + row


def create_train_iterator(config, *, process_index=None, process_count=None):
  """Infinite iterator of this process's batches {'image': uint8 NHWC, 'label': int32,
  'index': uint32 global example index (the device draws the noise from it, see
  device_transforms.noised_images), and with data.cond_key 'cond': f32 (N, cond_dim), NaN rows
  dropped}; supports get_state()/set_state()."""
  process_index, process_count = _process(process_index, process_count)
  local_batch = _local_batch(config, process_count)
  source, info = sources.data_source(config.data, config.data.train_split)
  prep = preprocessing.Preprocessor(config, info)
  stream = grain.MapDataset.source(source).shuffle(seed=config.seed).repeat(None)
  rows = _Rows(stream, config.batch_size, local_batch, process_index)

  def read(i):
    position = rows.global_position(int(i))
    rng = np.random.default_rng([config.seed, _NOISE_SALT, position])
    return prep.train_example(stream[position], rng, position)

  local = grain.MapDataset.range(_ENDLESS)  # Never exhausted in practice.
  dataset = local.map(read).batch(local_batch, drop_remainder=True)
  threads = config.data.num_workers or default_read_threads()
  options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2, threads))
  return iter(dataset.to_iter_dataset(read_options=options))


def default_read_threads() -> int:
  """grain read threads when config.data.num_workers is 0: the host's cores, up to 16 (decoding
  and resizing release the GIL)."""
  return max(1, min(16, os.cpu_count() or 1))


def create_eval_iterator(config, *, split=None, process_index=None, process_count=None):
  """Finite iterator covering the split exactly once across processes, in order, padded:
  {'image_uint8': uint8 NHWC, 'label': int32, 'mask': bool}. Every process yields as many batches."""
  process_index, process_count = _process(process_index, process_count)
  local_batch = _local_batch(config, process_count)
  source, info = sources.data_source(config.data, split or config.data.eval_split)
  prep = preprocessing.Preprocessor(config, info)
  n = len(source)
  num_batches = -(-n // config.batch_size)
  rows = _Rows(None, config.batch_size, local_batch, process_index)
  empty = np.zeros((config.image_size, config.image_size, config.model.in_channels), np.uint8)

  def read(i):
    position = rows.global_position(int(i))
    if position >= n:
      return {"image_uint8": empty, "label": np.int32(0), "mask": np.bool_(False)}
    image, label = prep.eval_example(source[position])
    return {"image_uint8": image, "label": label, "mask": np.bool_(True)}

  dataset = grain.MapDataset.range(num_batches * local_batch).map(read).batch(local_batch)
  return iter(dataset.to_iter_dataset())


def to_global_batch(batch, mesh, data_axes=("data", "fsdp")):
  """Per-process numpy batch → global jax.Arrays split over the mesh's data axes."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(data_axes))
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      batch)


class DevicePrefetcher:
  """Keeps `size` global batches in flight on a background thread.

  get_state() is the host iterator's state right after the last batch *returned by next()*, so a
  checkpoint never skips the batches still sitting in the queue.
  """

  def __init__(self, iterator, mesh, size: int = 2):
    self._iterator, self._mesh = iterator, mesh
    self._queue = collections.deque()
    self._state = iterator.get_state()
    self._size = max(size, 1)
    self._lock = threading.Lock()
    self._error = None
    self._ready = threading.Semaphore(0)
    self._space = threading.Semaphore(self._size)
    self._thread = threading.Thread(target=self._fill, daemon=True)
    self._thread.start()

  def _fill(self):
    try:
      while True:
        self._space.acquire()
        batch = to_global_batch(next(self._iterator), self._mesh)
        state = self._iterator.get_state()
        with self._lock:
          self._queue.append((batch, state))
        self._ready.release()
    except Exception as e:  # Surfaced on the consumer's next().
      self._error = e
      self._ready.release()

  def __iter__(self):
    return self

  def __next__(self):
    self._ready.acquire()
    with self._lock:
      if not self._queue:
        raise self._error
      batch, self._state = self._queue.popleft()
    self._space.release()
    return batch

  def get_state(self):
    return self._state


def prefetch_to_device(iterator, mesh, size: int = 2) -> DevicePrefetcher:
  return DevicePrefetcher(iterator, mesh, size)
