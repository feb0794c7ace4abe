"""One TarFlow block: a causal transformer driving an affine autoregressive transform.

Forward (density), in the block's token order (identity, or flipped for odd blocks):
  (a, b) = shift_by_one(proj_out(layers(proj_in(x) + pos + class)))
  z = (x - b) · exp(-a),  logdet = -mean(a)
so token t's transform depends only on tokens < t, and token 0 passes through. The inverse is
sequential over tokens: x[t+1] = z[t+1] · exp(a_t) + b_t, with a_t, b_t computed from x[<=t] by
feeding one token at a time through a KV cache (SEMANTICS.md §3, §6, §8).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tarflow_flax.models import transformer

EMBED_INIT_STD = 1e-2  # Reference init of pos_embed and class_embed.


class FlowBlock(nnx.Module):
  """Affine (NVP) or shift-only (VP) autoregressive flow over (N, T, Cp) tokens."""

  def __init__(self, *, token_dim: int, num_tokens: int, channels: int, num_layers: int,
               nvp: bool, num_classes: int, flip: bool, dtype, remat: bool = False,
               scan_layers: bool = True, rngs: nnx.Rngs):
    self.token_dim = token_dim
    self.nvp = nvp
    self.flip = flip
    self.dtype = dtype
    self.remat = remat
    self.scan_layers = scan_layers
    embed_init = jax.nn.initializers.normal(EMBED_INIT_STD)
    self.proj_in = transformer.linear(token_dim, channels, ("patch", "embed"), dtype=dtype,
                                      rngs=rngs)
    self.pos_embed = nnx.Param(embed_init(rngs.params(), (num_tokens, channels)),
                               out_sharding=("tokens", "embed"))
    self.class_embed = nnx.data(None)
    if num_classes:
      self.class_embed = nnx.Param(embed_init(rngs.params(), (num_classes, channels)),
                                   out_sharding=("classes", "embed"))
    self.layers = transformer.make_layer_stack(num_layers, channels, dtype=dtype, rngs=rngs)
    # Zero-initialised so that a fresh flow is the identity (as the reference).
    self.proj_out = transformer.linear(channels, token_dim * (2 if nvp else 1),
                                       ("embed", "patch"), dtype=dtype, zero_init=True,
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
    table = self.class_embed[...]
    mean = jnp.mean(table, axis=0)
    if y is None:
      return jnp.broadcast_to(mean, (batch, 1, table.shape[1]))
    rows = jnp.take(table, jnp.maximum(y, 0), axis=0)
    return jnp.where((y < 0)[:, None], mean, rows)[:, None, :]

  def embed(self, tokens, pos, cond):
    """proj_in + position (+ class) embedding, in float32."""
    h = self.proj_in(tokens.astype(self.dtype)).astype(jnp.float32) + pos
    return h if cond is None else h + cond

  def split_params(self, out):
    """proj_out output → (log-scale a, shift b), float32."""
    out = out.astype(jnp.float32)
    if self.nvp:
      return out[..., :self.token_dim], out[..., self.token_dim:]
    return jnp.zeros_like(out), out

  def sampling_conditioning(self, y, batch: int, guided: bool, attn_temp):
    """(class embedding, attention temperature) of a sampling pass. Guided: the batch doubles to
    [conditional (temperature 1) | unconditional (mean embedding, temperature attn_temp)]."""
    cond = self.class_embedding(y, batch)
    if not guided:
      return cond, jnp.float32(1.0)
    uncond = self.class_embedding(None, batch)
    cond = None if cond is None else jnp.concatenate([cond, uncond])
    temperature = jnp.concatenate([jnp.ones((batch,), jnp.float32),
                                   jnp.full((batch,), attn_temp, jnp.float32)])
    return cond, temperature

  def transform_params(self, x_perm, cond, temperature=1.0):
    """(a, b) for every token of `x_perm` (block order), shifted so token t sees tokens < t.

    cond: (N, 1, C) class embedding or None; temperature: attention temperature, scalar or (N,).
    """
    pos = self.permute(self.pos_embed[...][None])
    h = self.embed(x_perm, pos, cond)
    h = transformer.apply_layer_stack(self.layers, h, temperature, remat=self.remat,
                                      scan=self.scan_layers)
    out = self.proj_out(h.astype(self.dtype))
    out = jnp.concatenate([jnp.zeros_like(out[:, :1]), out[:, :-1]], axis=1)
    return self.split_params(out)

  def __call__(self, x, y=None):
    """x: (N, T, Cp) in image token order → (z in image token order, logdet (N,))."""
    x_perm = self.permute(x)
    a, b = self.transform_params(x_perm, self.class_embedding(y, x.shape[0]))
    z = (x_perm - b) * jnp.exp(-a)
    return self.permute(z), -jnp.mean(a, axis=(1, 2))

  def reverse(self, z, y=None, *, guidance_weights=None, guide_what: str = "ab",
              attn_temp=1.0):
    """Exact sequential inverse of `__call__` with a KV cache (no Python loop over tokens).

    guidance_weights: None (no guidance) or a (T-1,) float32 array, the guidance weight at each
    step (constant, or annealed as (i+1)/(T-1)·w). With guidance, a second, unconditional pass
    (mean class embedding, attention temperature `attn_temp`) runs batched with the conditional
    one and `a`/`b` are pushed away from it as `guide_what` says.
    """
    n, t, _ = z.shape
    guided = guidance_weights is not None
    x = self.permute(z.astype(jnp.float32))
    pos = self.permute(self.pos_embed[...][None])
    cond, temperature = self.sampling_conditioning(y, n, guided, attn_temp)
    cache = transformer.KVCache.zeros(self.num_layers, (2 if guided else 1) * n, t,
                                      pos.shape[-1], self.dtype)

    def step(i, carry):
      x, cache = carry
      token = jax.lax.dynamic_slice_in_dim(x, i, 1, axis=1)
      if guided:
        token = jnp.concatenate([token, token])
      h = self.embed(token, jax.lax.dynamic_slice_in_dim(pos, i, 1, axis=1), cond)
      h, cache = transformer.step_layer_stack(self.layers, h, cache, i, temperature)
      a, b = self.split_params(self.proj_out(h.astype(self.dtype)))
      if guided:
        a, b = apply_guidance(a, b, guidance_weights[i], guide_what)
      nxt = jax.lax.dynamic_slice_in_dim(x, i + 1, 1, axis=1) * jnp.exp(a) + b
      return jax.lax.dynamic_update_slice_in_dim(x, nxt, i + 1, axis=1), cache

    x, _ = jax.lax.fori_loop(0, t - 1, step, (x, cache))
    return self.permute(x)


def apply_guidance(a, b, weight, guide_what: str):
  """Splits [cond | uncond] (a, b) and pushes the conditional ones away from the unconditional:
  a ← a_c + w·(a_c − a_u) if 'a' in guide_what, likewise b."""
  (a, a_u), (b, b_u) = jnp.split(a, 2), jnp.split(b, 2)
  if "a" in guide_what:
    a = a + weight * (a - a_u)
  if "b" in guide_what:
    b = b + weight * (b - b_u)
  return a, b


def guidance_weights(num_tokens: int, guidance: float, annealed: bool) -> np.ndarray:
  """Per-step guidance weight, (T-1,) float32; annealed: (i+1)/(T-1)·guidance (in float64 first,
  as the reference computes it in Python before the float32 multiply)."""
  steps = np.arange(num_tokens - 1, dtype=np.float64)
  weights = (steps + 1) / (num_tokens - 1) * guidance if annealed else np.full_like(steps,
                                                                                   guidance)
  return weights.astype(np.float32)
