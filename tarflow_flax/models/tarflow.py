"""TarFlow: patchify, a stack of flow blocks with alternating token order (density direction;
the inverses are the samplers in `tarflow_flax.sampling`), and its training contract (the loss and
the prior update the train step runs; `FAMILY` in models/__init__.py).

Images are NHWC in [-1, 1]. Tokens are patches in raster order; inside a token the vector is laid
out (ph, pw, c) (the natural NHWC space-to-depth; the reference's channel-major layout differs only
by a fixed permutation, which `tarflow_flax.convert` applies to imported weights).
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tarflow_flax import losses
from tarflow_flax.models import flow_block, tarflow_config, transformer

PRIOR_LERP_WEIGHT = 0.1  # VP prior variance: var ← var + 0.1·(mean_batch(z²) − var).


class PriorVariance(nnx.Variable):
  """Per-token, per-channel prior variance (T, Cp): a buffer, not trained by the optimizer."""


class TarFlow(nnx.Module):
  """The normalizing flow x ↔ z with exact log-likelihood (docs/numerics.md §1–§8)."""

  def __init__(self, *, in_channels: int, img_size: int, patch_size: int, channels: int,
               num_blocks: int, layers_per_block, nvp: bool = True, num_classes: int = 0,
               dtype: str = "float32", remat: bool = False, remat_policy: str = "full",
               scan_layers: bool = True, attention: str = "auto", cond_dim: int = 0,
               soft_clip: float = 0.0, rngs: nnx.Rngs):
    spec = types.SimpleNamespace(
        in_channels=in_channels, patch_size=patch_size, channels=channels,
        num_blocks=num_blocks, layers_per_block=layers_per_block, nvp=nvp,
        num_classes=num_classes, dtype=dtype, remat_policy=remat_policy, attention=attention,
        cond_dim=cond_dim, soft_clip=soft_clip)
    tarflow_config.validate(spec, img_size)
    self.in_channels = in_channels
    self.img_size = img_size
    self.patch_size = patch_size
    self.num_classes = num_classes
    self.cond_dim = cond_dim
    self.nvp = nvp
    self.num_tokens = (img_size // patch_size)**2
    self.token_dim = in_channels * patch_size**2
    # Logical axis names only: sharding happens when the trainer places the state on a mesh.
    with nnx.use_eager_sharding(False):
      self.var = PriorVariance(jnp.ones((self.num_tokens, self.token_dim), jnp.float32),
                               out_sharding=("tokens", "patch"))
      self.blocks = nnx.List([
          flow_block.FlowBlock(
              token_dim=self.token_dim, num_tokens=self.num_tokens, channels=channels,
              num_layers=depth, nvp=nvp, num_classes=num_classes, flip=bool(i % 2),
              dtype=jnp.dtype(dtype), remat=remat, remat_policy=remat_policy,
              scan_layers=scan_layers, cond_dim=cond_dim, soft_clip=soft_clip, rngs=rngs)
          for i, depth in enumerate(tarflow_config.block_depths(spec))
      ])
    for _, module in nnx.iter_modules(self):  # The attention kernel is a static attribute.
      if isinstance(module, transformer.Attention):
        module.implementation = attention

  # -- layout ----------------------------------------------------------------------------------

  def check_images(self, x) -> None:
    expected = (self.img_size, self.img_size, self.in_channels)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
      raise ValueError(f"expected images of shape (N, {expected[0]}, {expected[1]}, "
                       f"{expected[2]}) (NHWC), got {tuple(x.shape)}")

  def check_tokens(self, tokens) -> None:
    expected = (self.num_tokens, self.token_dim)
    if tokens.ndim != 3 or tuple(tokens.shape[1:]) != expected:
      raise ValueError(f"expected tokens of shape (N, {expected[0]}, {expected[1]}), "
                       f"got {tuple(tokens.shape)}")

  def check_labels(self, y, batch: int) -> None:
    """Shape always; range [-1, num_classes) when the labels are concrete (not traced)."""
    if y is None:
      return
    if self.num_classes == 0:
      raise ValueError("labels given to an unconditional model (num_classes=0); pass y=None")
    if jnp.ndim(y) != 1 or jnp.shape(y)[0] != batch:
      raise ValueError(f"expected labels of shape ({batch},), got {jnp.shape(y)}")
    if not isinstance(y, jax.core.Tracer):
      y_np = np.asarray(y)
      bad = y_np[(y_np < -1) | (y_np >= self.num_classes)]
      if bad.size:
        raise ValueError(f"label {int(bad[0])} outside [-1, {self.num_classes}) "
                         "(-1 = dropped label)")

  def check_cond(self, y_cont, batch: int) -> None:
    """y_cont: None or (batch, cond_dim) (rows of NaN = unconditional); only with cond_dim > 0."""
    if y_cont is None:
      return
    if self.cond_dim == 0:
      raise ValueError("continuous conditions given to a model without AdaLN (model.cond_dim=0);"
                       " pass y_cont=None")
    if jnp.ndim(y_cont) != 2 or tuple(jnp.shape(y_cont)) != (batch, self.cond_dim):
      raise ValueError(f"expected continuous conditions of shape ({batch}, {self.cond_dim}), got "
                       f"{tuple(jnp.shape(y_cont))}")

  def patchify(self, x):
    """(N, H, W, C) → (N, T, p·p·C), raster over patches, (ph, pw, c) inside a token."""
    self.check_images(x)
    n, h, w, c = x.shape
    p = self.patch_size
    x = x.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, self.num_tokens, self.token_dim)

  def unpatchify(self, tokens):
    """Exact inverse of `patchify`."""
    self.check_tokens(tokens)
    n = tokens.shape[0]
    p, g, c = self.patch_size, self.img_size // self.patch_size, self.in_channels
    x = tokens.reshape(n, g, g, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, self.img_size, self.img_size, c)

  # -- density ---------------------------------------------------------------------------------

  def __call__(self, x, y=None, y_cont=None):
    """x: (N, H, W, C) → (z (N, T, Cp), logdets (N,), per-block outputs and log-dets).

    logdets follow the reference: per-dimension means (−mean of log-scales), summed over blocks.
    y_cont: (N, cond_dim) AdaLN conditions (models with cond_dim > 0); None = unconditional.
    """
    self.check_labels(y, x.shape[0])
    self.check_cond(y_cont, x.shape[0])
    h = self.patchify(x).astype(jnp.float32)
    logdets = jnp.zeros((), jnp.float32)
    outputs, block_logdets = [], []
    for block in self.blocks:
      h, logdet = block(h, y, y_cont)
      logdets = logdets + logdet
      outputs.append(h)
      block_logdets.append(logdet)
    return h, logdets, {"block_outputs": outputs, "block_logdets": block_logdets}

  def update_prior(self, z) -> None:
    """VP models: moves `var` 10% toward the batch mean of z² (in place, as the reference)."""
    z2 = jnp.mean(jax.lax.stop_gradient(z).astype(jnp.float32)**2, axis=0)
    self.var[...] = self.var[...] + PRIOR_LERP_WEIGHT * (z2 - self.var[...])


# -- training contract (models.family.ModelFamily) -------------------------------------------------

def training_loss(model: TarFlow, images, labels, cond):
  """(loss, logged, stats) of a batch: the reference's NLL loss; its prior and log-det parts and
  each block's log-det (logged); the per-position mean of z² (the VP prior's update reads it)."""
  z, logdets, aux = model(images, labels, cond)
  logged = {
      "prior": 0.5 * jnp.mean(jnp.square(z)),
      "logdet": jnp.mean(logdets),
      "logdet_block": jnp.stack([jnp.mean(l) for l in aux["block_logdets"]]),  # Per block.
  }
  stats = {"z2": jnp.mean(jnp.square(jax.lax.stop_gradient(z)), axis=0)}
  return losses.nll_loss(z, logdets), logged, stats


def updated_prior(model_config, rest, stats):
  """VP models: the prior variance moves 10% toward the global batch's mean z² after each step
  (as `TarFlow.update_prior`); NVP models have nothing to update."""
  if model_config.nvp:
    return rest
  return jax.tree.map(lambda v: v + PRIOR_LERP_WEIGHT * (stats["z2"] - v), rest)
