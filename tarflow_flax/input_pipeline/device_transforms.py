"""What happens to a batch on the device: uint8 → [-1, 1], and the noise the model is trained on.

One home for the train step, bits/dim and the Bayes classifier (docs/numerics.md §4, §10):
- Gaussian noise: x/127.5 − 1 + noise_std·ε, ε ~ N(0, 1);
- uniform dequantization: ((x + u)/256)·2 − 1, u ~ U[0, 1) (the reference's op order).
All functions are traceable and take numpy or jax arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NOISE_TYPES = ("gaussian", "uniform")
# Separates the train step's noise stream from the host's flip/label stream (same seed).
NOISE_SALT = 0x4E01


def to_unit_range(x_uint8):
  """uint8 in [0, 255] → float32 in [-1, 1]."""
  return x_uint8.astype(jnp.float32) / 127.5 - 1.0


def dequantize(x_uint8, u):
  """Uniform dequantization with the draws u in [0, 1): ((x + u)/256)·2 − 1."""
  return ((x_uint8.astype(jnp.float32) + u) / 256) * 2 - 1


def standard_draw(key, shape, noise_type: str):
  """One standard draw of the noise type: ε ~ N(0, 1) ('gaussian') or u ~ U[0, 1) ('uniform')."""
  if noise_type == "uniform":
    return jax.random.uniform(key, shape, jnp.float32)
  return jax.random.normal(key, shape, jnp.float32)


def add_noise(x_uint8, draw, *, noise_type: str, noise_std: float):
  """The noised images from uint8 images and a standard draw of the same shape."""
  if noise_type == "uniform":
    return dequantize(x_uint8, draw)
  return to_unit_range(x_uint8) + jnp.float32(noise_std) * draw


def noised_batch(x_uint8, key, *, noise_type: str, noise_std: float):
  """A batch noised from one key (the evaluations: a key per batch and draw)."""
  return add_noise(x_uint8, standard_draw(key, x_uint8.shape, noise_type),
                   noise_type=noise_type, noise_std=noise_std)


def noised_images(x_uint8, indices, *, seed: int, noise_type: str, noise_std: float):
  """The train step's batch: example i's noise is drawn from fold_in(key(seed, NOISE_SALT),
  indices[i]) (its global index), so a batch is the same wherever and whenever it is computed."""
  base = jax.random.fold_in(jax.random.key(seed), NOISE_SALT)
  keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(indices)
  draws = jax.vmap(lambda k: standard_draw(k, x_uint8.shape[1:], noise_type))(keys)
  return add_noise(x_uint8, draws, noise_type=noise_type, noise_std=noise_std)
