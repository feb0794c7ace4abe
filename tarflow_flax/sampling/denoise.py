"""Score-based denoising of samples: one Tweedie step x + σ²·∇ₓ log p(x), optionally scaled
(lr·σ²·∇ₓ log p, as the reference's FID script).

Step size and gradient as the reference: docs/numerics.md §9.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from tarflow_flax import losses


@nnx.jit
def _denoise_batch(model, x, y, noise_std, lr, y_cont):
  """x − lr·n·D·σ²·∇ₓ loss; the loss is a mean over n·D elements, so this is
  x + lr·σ²·∇ₓ log p(x) per image, computed in the reference's order of operations."""

  def loss_fn(x):
    z, logdets, _ = model(x, y, y_cont)
    return losses.nll_loss(z, logdets)

  step_size = x.size * noise_std**2 * lr  # lr·n·H·W·C·σ²; lr = 1 multiplies exactly.
  return x - step_size * jax.grad(loss_fn)(x)


def denoise(model, x_nhwc, y=None, noise_std: float = 0.05, *, lr: float = 1.0,
            batch_size: int | None = None, y_cont=None):
  """Denoises NHWC samples in sub-batches of `batch_size` (default: all at once) to bound memory.

  lr: the step as a multiple of σ²·∇ₓ log p (1: the theoretical optimum, the reference's
  `--self_denoising_lr`). Labels and continuous conditions as used for sampling (None:
  unconditional).
  """
  x_nhwc = jnp.asarray(x_nhwc, jnp.float32)
  model.check_images(x_nhwc)
  n = x_nhwc.shape[0]
  model.check_labels(y, n)
  model.check_cond(y_cont, n)
  batch_size = batch_size or n
  noise_std, lr = jnp.float32(noise_std), jnp.float32(lr)
  out = []
  for start in range(0, n, batch_size):
    sub_y = None if y is None else jnp.asarray(y)[start:start + batch_size]
    sub_c = None if y_cont is None else jnp.asarray(y_cont)[start:start + batch_size]
    out.append(_denoise_batch(model, x_nhwc[start:start + batch_size], sub_y, noise_std, lr,
                              sub_c))
  return jnp.concatenate(out) if len(out) > 1 else out[0]
