"""Shared test helpers: golden reference files and randomised tiny models."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tarflow_flax import models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN_DIR = os.environ.get("TARFLOW_GOLDEN_DIR", os.path.join(REPO, "..", "shared", "golden"))


def golden_files():
  files = sorted(glob.glob(os.path.join(GOLDEN_DIR, "*.npz")))
  if not files and os.environ.get("TARFLOW_REQUIRE_GOLDEN"):
    raise FileNotFoundError(f"no golden .npz files in {GOLDEN_DIR} (TARFLOW_REQUIRE_GOLDEN is set)")
  return files


def tiny_model(*, in_channels=1, img_size=8, patch_size=2, channels=64, num_blocks=2,
               layers_per_block=1, nvp=True, num_classes=0, dtype="float32", seed=0,
               scale=0.1, **kwargs) -> models.TarFlow:
  """A small TarFlow whose zero-initialised proj_out is replaced by random weights (so blocks are
  far from the identity) and, for VP models, with a random prior variance."""
  model = models.TarFlow(in_channels=in_channels, img_size=img_size, patch_size=patch_size,
                         channels=channels, num_blocks=num_blocks,
                         layers_per_block=layers_per_block, nvp=nvp, num_classes=num_classes,
                         dtype=dtype, rngs=nnx.Rngs(seed), **kwargs)
  key = jax.random.key(seed + 1)
  for i, block in enumerate(model.blocks):
    k1, k2, k3 = jax.random.split(jax.random.fold_in(key, i), 3)
    kernel = block.proj_out.kernel
    kernel[...] = scale * jax.random.normal(k1, kernel.shape) / np.sqrt(kernel.shape[0])
    block.proj_out.bias[...] = 0.05 * jax.random.normal(k2, block.proj_out.bias.shape)
    block.pos_embed[...] = 0.3 * jax.random.normal(k3, block.pos_embed.shape)
  if not nvp:
    model.var[...] = jax.random.uniform(key, model.var.shape, minval=0.5, maxval=2.0)
  return model


def random_images(n, model, seed=0):
  return jax.random.uniform(jax.random.key(seed), (n, model.img_size, model.img_size,
                                                   model.in_channels), minval=-1.0, maxval=1.0)


def rel_err(actual, expected) -> float:
  expected = np.asarray(expected, np.float64)
  return float(np.max(np.abs(np.asarray(actual, np.float64) - expected)) /
               max(np.max(np.abs(expected)), 1e-30))


