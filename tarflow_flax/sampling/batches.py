"""Reproducible sample batches spread over every device of every host.

Sample i of a run with seed s has the latent drawn from fold_in(key(s), i) (redrawn from keys
folded further if it came out non-finite) and (conditional models) the class i mod num_classes,
or the i-th entry of a class list cycled: each image depends on (seed, i) only, not on the batch
it falls in, nor on the device or process count. A batch is zero-padded to a size the
data-parallel devices divide (one compiled shape for every batch) and split over them, so every
device computes only its own rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from tarflow_flax import sharding


# A sample whose images stay non-finite after this many fresh draws stops the job.
MAX_REDRAWS = 8


def latents(seed: int, start: int, count: int, tokens: int, dim: int) -> np.ndarray:
  """Latents (count, tokens, dim) of samples start..start+count−1."""
  return redraw_latents(seed, np.arange(start, start + count), 0, tokens, dim)


def redraw_latents(seed: int, indices, attempt: int, tokens: int, dim: int) -> np.ndarray:
  """Latents of samples `indices` at draw `attempt`: 0 is the first draw (fold_in(key(seed), i)),
  attempt a > 0 the a-th redraw after a non-finite sample, from fold_in(that key, a)."""

  def one(i):
    key = jax.random.fold_in(jax.random.key(seed), i)
    return jax.random.normal(jax.random.fold_in(key, attempt) if attempt else key, (tokens, dim))

  return np.asarray(jax.vmap(one)(jnp.asarray(indices)))


def class_labels(num_classes: int, start: int, count: int, classes=None) -> np.ndarray | None:
  """Labels of samples start..start+count−1 (None for an unconditional model): balanced."""
  if not num_classes:
    return None
  pool = np.asarray(classes if classes else np.arange(num_classes), np.int32)
  return pool[np.arange(start, start + count) % len(pool)]


def parse_cond(values, cond_dim: int) -> np.ndarray | None:
  """--cond values → (V, cond_dim) float32 vectors, or None (unconditional)."""
  if not values:
    return None
  if not cond_dim:
    raise ValueError("--cond given, but the model has no continuous conditioning "
                     "(model.cond_dim=0)")
  try:
    flat = np.asarray([float(v) for v in values], np.float32)
  except ValueError as e:
    raise ValueError(f"--cond: {e}") from e
  if flat.size % cond_dim:
    raise ValueError(f"--cond has {flat.size} values: not a multiple of model.cond_dim={cond_dim}")
  return flat.reshape(-1, cond_dim)


def conditions(vectors, start: int, count: int) -> np.ndarray | None:
  """AdaLN conditions of samples start..start+count−1: the (V, cond_dim) `vectors` cycled."""
  if vectors is None:
    return None
  return np.asarray(vectors, np.float32)[np.arange(start, start + count) % len(vectors)]


def padded_size(count: int, mesh) -> int:
  """The smallest batch >= count that the mesh's data-parallel devices divide."""
  devices = sharding.data_parallel_size(mesh)
  return -(-count // devices) * devices


def global_batch(values: np.ndarray, size: int, target) -> jax.Array:
  """`values` zero-padded to `size` rows as a global array with sharding `target`. Every host
  holds the same `values` and copies only the rows of its own devices."""
  padded = np.zeros((size,) + values.shape[1:], values.dtype)
  padded[:len(values)] = values
  return jax.make_array_from_callback(padded.shape, target, lambda index: padded[index])


def local_rows(array: jax.Array) -> int:
  """How many rows of `array` live on this process's devices (replicas counted once)."""
  row_ranges = {s.index[0].indices(array.shape[0]) for s in array.addressable_shards}
  return sum(len(range(*r)) for r in row_ranges)


def _sample_rows(model, mesh, noise, labels, values, batch: int, sample_options):
  """Samples a padded global batch of latents → (float NHWC images of every row on every host,
  the sampler's info)."""
  from tarflow_flax.sampling import api  # pylint: disable=g-import-not-at-top
  count = len(noise)
  noise = global_batch(noise, batch, sharding.batch_sharding(mesh))
  # Labels stay replicated: small, and the model checks their range on the host.
  y = None if labels is None else global_batch(labels, batch, sharding.replicated(mesh))
  y_cont = None if values is None else global_batch(values, batch, sharding.replicated(mesh))
  images, info = api.sample(model, noise, y, y_cont=y_cont, **sample_options)
  info = {**info, "local_rows": local_rows(images)}
  return to_host(images, mesh)[:count], info


def to_host(array: jax.Array, mesh) -> np.ndarray:
  """A global array as a writable numpy copy on every host (its rows may live on devices of
  other processes)."""
  array = jax.jit(lambda x: x, out_shardings=sharding.replicated(mesh))(array)
  return np.array(jax.device_get(array))


def _non_finite(images: np.ndarray) -> np.ndarray:
  return ~np.isfinite(images).reshape(len(images), -1).all(axis=1)


def generate(model, mesh, *, seed: int, start: int, count: int, batch: int, classes=None,
             cond=None, **sample_options) -> tuple[np.ndarray, np.ndarray | None, dict]:
  """Samples start..start+count−1 (count <= batch) → (float NHWC images in [-1, 1] on every host,
  labels, the sampler's info). cond: AdaLN condition vectors (V, cond_dim), cycled over the
  samples. `sample_options`: those of `sampling.sample` (method, guidance, denoise_std, …).

  A sample with a NaN/inf value (an inverse that overflowed, e.g. in bfloat16) is drawn again
  from fresh latents (`redraw_latents`, same label) up to MAX_REDRAWS times, so it depends on
  (seed, i) only; info['redrawn'] counts the redraws. Every host sees the same images, hence
  takes the same decisions.
  """
  labels = class_labels(model.num_classes, start, count, classes)
  values = conditions(cond, start, count)
  images, info = _sample_rows(model, mesh, latents(seed, start, count, model.num_tokens,
                                                   model.token_dim),
                              labels, values, batch, sample_options)
  bad, redrawn = _non_finite(images), 0
  for attempt in range(1, MAX_REDRAWS + 1):
    if not bad.any():
      break
    rows = np.flatnonzero(bad)
    redrawn += len(rows)
    logging.warning("samples %s: non-finite values; drawing them again (redraw %d)",
                    (start + rows).tolist(), attempt)
    fresh, _ = _sample_rows(
        model, mesh, redraw_latents(seed, start + rows, attempt, model.num_tokens,
                                    model.token_dim),
        None if labels is None else labels[rows], None if values is None else values[rows],
        batch, sample_options)
    images[rows] = fresh
    bad[rows] = _non_finite(fresh)
  if bad.any():
    raise FloatingPointError(
        f"samples {(start + np.flatnonzero(bad)).tolist()} stayed non-finite after {MAX_REDRAWS} "
        "fresh draws: the model's inverse overflows; sample in float32 "
        "(--config.model.dtype=float32) or with less guidance")
  return images, labels, {**info, "redrawn": redrawn}
