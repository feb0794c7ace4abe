"""The sampling trace: each sample's image after every flow block, from the noise to the sample.

Sample i is the one the sample job and the in-training grid draw first (latent and class from
(seed, i), batches.py), here through the exact sequential inverse.
"""

from __future__ import annotations

import jax
import numpy as np

from tarflow_flax import sharding
from tarflow_flax.sampling import batches, sequential
from tarflow_flax.sampling.denoise import denoise


def sample_trace(model, mesh, *, seed: int, count: int, guidance: float = 0.0,
                 guide_what: str = "ab", attn_temp: float = 1.0, annealed_guidance: bool = False,
                 denoise_std: float | None = None, denoise_lr: float = 1.0, classes=None,
                 cond=None) -> np.ndarray:
  """Samples 0..count−1 with every step → (count, steps, H, W, C) floats in about [-1, 1].

  Steps: the noise, the image after each block in sampling order (the last one is the sample),
  then the denoised sample when `denoise_std` and `denoise_lr` are set. classes and cond: the
  class list and AdaLN condition vectors to cycle, as in batches.generate.
  """
  put = lambda v: None if v is None else jax.device_put(v, sharding.replicated(mesh))
  noise = put(batches.latents(seed, 0, count, model.num_tokens, model.token_dim))
  y = put(batches.class_labels(model.num_classes, 0, count, classes))
  y_cont = put(batches.conditions(cond, 0, count))
  final, sequence = sequential.reverse(model, noise, y, guidance=guidance, guide_what=guide_what,
                                       attn_temp=attn_temp, annealed_guidance=annealed_guidance,
                                       return_sequence=True, y_cont=y_cont)
  steps = [batches.to_host(sequence, mesh).swapaxes(0, 1)]
  if denoise_std and denoise_lr:
    denoised = denoise(model, final, y, denoise_std, lr=denoise_lr, y_cont=y_cont)
    steps.append(batches.to_host(denoised, mesh)[:, None])
  return np.concatenate(steps, axis=1)
