"""Exact bits/dim over a whole split, on every device and host (SEMANTICS.md §10).

Uniform dequantization x_deq = ((x_int + u)/256)·2 − 1 with K independent draws of u per image,
a forward pass with y = None, and bpd = (0.5·mean z² + 0.5·log 2π + log 128 − logdets)/ln 2 with
D = C·H·W. The eval iterator pads the last batch and masks the padding, so every example of the
split counts exactly once whatever the batch size or device count.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from tarflow_flax import input_pipeline as data_lib
from tarflow_flax import losses, sharding


def masked_bpd_sums(model, images_uint8, mask, u):
  """(Σ bpd, Σ bpd², count) over the unmasked rows, dequantizing with the given noise u."""
  x = data_lib.dequantize(images_uint8, u)
  z, logdets, _ = model(x)  # y = None, as the reference's evaluation.
  bpd = losses.bits_per_dim(z, logdets)
  w = mask.astype(jnp.float32)
  return jnp.sum(bpd * w), jnp.sum(bpd * bpd * w), jnp.sum(w)


def make_bpd_step(graphdef, mesh):
  """jit: (model state, uint8 images, mask, key) → (Σ bpd, Σ bpd², count) over unmasked rows."""

  def step(model_state, images, mask, key):
    u = jax.random.uniform(key, images.shape, jnp.float32)
    return masked_bpd_sums(nnx.merge(graphdef, model_state), images, mask, u)

  return jax.jit(step, out_shardings=sharding.replicated(mesh))


def evaluate_bpd(graphdef, model_state, config, mesh, *, split: str | None = None,
                 num_batches: int = -1, num_dequant: int = 1, seed: int = 0,
                 progress=None) -> dict[str, float]:
  """Mean bits/dim (and its standard error over images) of the model on a split.

  num_dequant: K dequantization draws per image; an image's bpd is the mean over its K draws
  (each draw is an unbiased estimate of the discrete NLL bound).
  """
  step = make_bpd_step(graphdef, mesh)
  total = total_sq = count = 0.0
  for draw in range(num_dequant):
    per_draw = []
    iterator = data_lib.create_eval_iterator(config, split=split)
    for index, batch in enumerate(iterator):
      if 0 <= num_batches <= index:
        break
      batch = data_lib.to_global_batch(batch, mesh)
      key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), draw), index)
      s, s2, n = step(model_state, batch["image_uint8"], batch["mask"], key)
      per_draw.append((float(s), float(s2), float(n)))
      if progress is not None:
        progress(draw, index)
    total += sum(p[0] for p in per_draw)
    total_sq += sum(p[1] for p in per_draw)
    count += sum(p[2] for p in per_draw)
  if count == 0:
    raise ValueError(f"the evaluation split {split or config.data.eval_split!r} yielded no images")
  mean = total / count
  variance = max(total_sq / count - mean * mean, 0.0)
  return {"bpd": mean, "bpd_stderr": math.sqrt(variance / count),
          "num_images": count / num_dequant, "num_dequant": num_dequant}
