"""One TarFlow block: a causal transformer driving an affine autoregressive transform.

Forward (density), in the block's token order (identity, or flipped for odd blocks):
  (a, b) = shift_by_one(proj_out(layers(proj_in(x) + pos + class)))
  z = (x - b) · exp(-a),  logdet = -mean(a)
so token t's transform depends only on tokens < t, and token 0 passes through. The inverse solves
x[t+1] = z[t+1] · exp(a_t) + b_t, with a_t, b_t computed from x[<=t]: the samplers (sampling/)
feed tokens through a KV cache with `cached_params` (docs/numerics.md §3, §6, §8).

Two optional features beyond the reference (both off by default, adding no parameters and no ops):
- AdaLN conditioning (`cond_dim` > 0): a continuous vector y_cont (N, cond_dim) is embedded
  (Linear + SiLU) and drives a zero-initialised scale and shift of every LayerNorm. A row of NaNs
  (or y_cont=None) selects a learned null embedding instead: the "unconditional" input that
  condition dropout trains and classifier-free guidance contrasts against.
- Soft-clipped log-scales (`soft_clip` = c > 0): a ← c·tanh(a/c), applied where (a, b) are made,
  so the forward, its log-det and every inverse use the same bounded a.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from tarflow_flax import sharding
from tarflow_flax.models import transformer

EMBED_INIT_STD = 1e-2  # Reference init of pos_embed and class_embed.


class SamplingPass(NamedTuple):
  """What every KV-cached step of one sampling pass over a block shares (`FlowBlock.sampling_pass`).

  Guided, the batch is doubled to [conditional | unconditional] and the steps push (a, b) away from
  the unconditional pass as `guide_what` says.
  """
  layers: tuple  # The stacked layers, unstacked once, outside the token loops.
  pos: jax.Array  # (1, T, C) position embeddings in the block's token order.
  cond: jax.Array | None  # (N, 1, C) class embedding (2N guided).
  adaln: jax.Array | None  # (N, C) AdaLN vector (2N guided).
  temperature: jax.Array  # Attention temperature, scalar or (2N,) guided.
  guided: bool
  guide_what: str


class FlowBlock(nnx.Module):
  """Affine (NVP) or shift-only (VP) autoregressive flow over (N, T, Cp) tokens."""

  def __init__(self, *, token_dim: int, num_tokens: int, channels: int, num_layers: int,
               nvp: bool, num_classes: int, flip: bool, dtype, remat: bool = False,
               remat_policy: str = "full", scan_layers: bool = True, cond_dim: int = 0,
               soft_clip: float = 0.0, rngs: nnx.Rngs):
    self.token_dim = token_dim
    self.nvp = nvp
    self.flip = flip
    self.dtype = dtype
    self.remat = remat
    self.remat_policy = remat_policy
    self.scan_layers = scan_layers
    self.soft_clip = float(soft_clip)
    embed_init = jax.nn.initializers.normal(EMBED_INIT_STD)
    self.proj_in = transformer.linear(token_dim, channels, ("patch", "embed"), dtype=dtype,
                                      rngs=rngs)
    self.pos_embed = nnx.Param(embed_init(rngs.params(), (num_tokens, channels)),
                               out_sharding=("tokens", "embed"))
    self.class_embed = nnx.data(None)
    if num_classes:
      self.class_embed = nnx.Param(embed_init(rngs.params(), (num_classes, channels)),
                                   out_sharding=("classes", "embed"))
    self.cond_embed = nnx.data(None)
    self.cond_null = nnx.data(None)
    if cond_dim:
      self.cond_embed = transformer.linear(cond_dim, channels, ("cond", "embed"), dtype=dtype,
                                           rngs=rngs)
      # Learned rather than a zero y_cont: 0 is a valid (e.g. average) feature value.
      self.cond_null = nnx.Param(embed_init(rngs.params(), (channels,)),
                                 out_sharding=("embed",))
    self.layers = transformer.make_layer_stack(num_layers, channels, dtype=dtype,
                                               adaln=bool(cond_dim), rngs=rngs)
    # As the reference: weight zero, bias torch's default U(±1/√channels). A fresh flow is thus
    # a small fixed affine map per token, not the identity.
    self.proj_out = transformer.linear(channels, token_dim * (2 if nvp else 1),
                                       ("embed", "patch"), dtype=dtype, zero_kernel=True,
                                       rngs=rngs)

  @property
  def num_layers(self) -> int:
    return self.layers.mlp.up.kernel.shape[0]

  def permute(self, tokens):
    """The block's token order; its own inverse."""
    return tokens[:, ::-1] if self.flip else tokens

  def class_embedding(self, y, batch: int):
    """(N, 1, C) float32 class embedding; y=None or label -1 gives the mean over classes."""
    if self.class_embed is None:
      return None
    # The whole (small) table on every device, so each looks up its own rows of the batch.
    table = sharding.constrain(self.class_embed[...], (None, None))
    mean = jnp.mean(table, axis=0)
    if y is None:
      return jnp.broadcast_to(mean, (batch, 1, table.shape[1]))
    rows = jnp.take(table, jnp.maximum(y, 0), axis=0)
    return jnp.where((y < 0)[:, None], mean, rows)[:, None, :]

  def adaln_embedding(self, y_cont, batch: int):
    """(N, C) float32 AdaLN conditioning vector, or None without AdaLN.

    y_cont: (N, cond_dim); None, or a row containing NaN, gives the learned null embedding.
    """
    if self.cond_embed is None:
      return None
    null = jnp.broadcast_to(self.cond_null[...], (batch, self.cond_null.shape[0]))
    if y_cont is None:
      return null
    y_cont = jnp.asarray(y_cont, jnp.float32)
    dropped = jnp.any(jnp.isnan(y_cont), axis=-1, keepdims=True)
    # Zero the NaNs before the matmul: NaN·0 in its backward pass would poison the gradients.
    h = self.cond_embed(jnp.where(dropped, 0.0, y_cont).astype(self.dtype))
    return jnp.where(dropped, null, jax.nn.silu(h.astype(jnp.float32)))

  def embed(self, tokens, pos, cond):
    """proj_in + position (+ class) embedding, in float32."""
    h = self.proj_in(tokens.astype(self.dtype)).astype(jnp.float32) + pos
    return h if cond is None else h + cond

  def split_params(self, out):
    """proj_out output → (log-scale a, shift b), float32."""
    out = out.astype(jnp.float32)
    if not self.nvp:
      return jnp.zeros_like(out), out
    a, b = out[..., :self.token_dim], out[..., self.token_dim:]
    if self.soft_clip:
      a = self.soft_clip * jnp.tanh(a / self.soft_clip)
    return a, b

  def sampling_pass(self, y, batch: int, *, guided: bool, guide_what: str = "ab", attn_temp=1.0,
                    y_cont=None) -> SamplingPass:
    """The shared inputs of a sampling pass. Guided: the batch doubles to [conditional
    (temperature 1) | unconditional (mean class embedding, null AdaLN embedding, temperature
    attn_temp)]."""
    cond = self.class_embedding(y, batch)
    adaln = self.adaln_embedding(y_cont, batch)
    temperature = jnp.float32(1.0)
    if guided:
      uncond = self.class_embedding(None, batch)
      cond = None if cond is None else jnp.concatenate([cond, uncond])
      if adaln is not None:
        adaln = jnp.concatenate([adaln, self.adaln_embedding(None, batch)])
      temperature = jnp.concatenate([jnp.ones((batch,), jnp.float32),
                                     jnp.full((batch,), attn_temp, jnp.float32)])
    return SamplingPass(transformer.unstack_layers(self.layers),
                        self.permute(self.pos_embed[...][None]), cond, adaln, temperature, guided,
                        guide_what)

  def empty_cache(self, sampling: SamplingPass, batch: int) -> transformer.KVCache:
    """A zero-length KV cache for a sampling pass over `batch` images (the samplers grow it)."""
    return transformer.KVCache.zeros(self.num_layers, (2 if sampling.guided else 1) * batch, 0,
                                     sampling.pos.shape[-1], self.dtype)

  def cached_params(self, sampling: SamplingPass, inputs, position, cache,
                    guidance_weight=None):
    """(a, b, cache): the transform parameters of the tokens after `inputs`, the S block-order
    tokens at positions position … position+S−1, fed through the KV cache (which they extend;
    the earlier positions must be in it). guidance_weight: the weight of each of the S updates
    (a scalar, or broadcastable to (N, S, 1)) in a guided pass."""
    if sampling.guided:
      inputs = jnp.concatenate([inputs, inputs])
    pos = jax.lax.dynamic_slice_in_dim(sampling.pos, position, inputs.shape[1], axis=1)
    h = self.embed(inputs, pos, sampling.cond)
    h, cache = transformer.step_layers(sampling.layers, h, cache, position, sampling.temperature,
                                       sampling.adaln)
    a, b = self.split_params(self.proj_out(h.astype(self.dtype)))
    if sampling.guided:
      a, b = apply_guidance(a, b, guidance_weight, sampling.guide_what)
    return a, b, cache

  def transform_params(self, x_perm, cond, temperature=1.0, adaln=None):
    """(a, b) for every token of `x_perm` (block order), shifted so token t sees tokens < t.

    cond: (N, 1, C) class embedding or None; temperature: attention temperature, scalar or (N,);
    adaln: (N, C) AdaLN conditioning vector or None.
    """
    pos = self.permute(self.pos_embed[...][None])
    h = self.embed(x_perm, pos, cond)
    h = transformer.apply_layer_stack(self.layers, h, temperature, remat=self.remat,
                                      remat_policy=self.remat_policy, scan=self.scan_layers,
                                      cond=adaln)
    out = self.proj_out(h.astype(self.dtype))
    out = jnp.concatenate([jnp.zeros_like(out[:, :1]), out[:, :-1]], axis=1)
    return self.split_params(out)

  def __call__(self, x, y=None, y_cont=None):
    """x: (N, T, Cp) in image token order → (z in image token order, logdet (N,))."""
    x_perm = self.permute(x)
    a, b = self.transform_params(x_perm, self.class_embedding(y, x.shape[0]),
                                 adaln=self.adaln_embedding(y_cont, x.shape[0]))
    z = (x_perm - b) * jnp.exp(-a)
    return self.permute(z), -jnp.mean(a, axis=(1, 2))


def apply_guidance(a, b, weight, guide_what: str):
  """Splits [cond | uncond] (a, b) and pushes the conditional ones away from the unconditional:
  a ← a_c + w·(a_c − a_u) if 'a' in guide_what, likewise b."""
  (a, a_u), (b, b_u) = jnp.split(a, 2), jnp.split(b, 2)
  if "a" in guide_what:
    a = a + weight * (a - a_u)
  if "b" in guide_what:
    b = b + weight * (b - b_u)
  return a, b
