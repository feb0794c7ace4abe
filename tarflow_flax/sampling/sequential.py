"""The exact sequential inverse: one token at a time through a KV cache (the reference sampler).

In its token order, a block's inverse is x[t+1] = z[t+1]·exp(a_t) + b_t with a_t, b_t from
x[<=t]: token t is fed through the layers (`FlowBlock.cached_params`), its keys and values join
the cache, and the next token follows. Blocks are inverted last to first, from √var-scaled noise.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from tarflow_flax.sampling import guidance as guidance_lib

# The cache grows in up to SAMPLING_CHUNKS steps (each one more compiled token loop) of at least
# MIN_SAMPLING_CHUNK tokens. On a 2-core CPU, 8 chunks made sampling at 256 tokens 1.3-1.4x
# faster than one full-length cache; 16 were no faster.
SAMPLING_CHUNKS = 8
MIN_SAMPLING_CHUNK = 32


def sampling_chunks(num_steps: int) -> list[tuple[int, int]]:
  """Splits the sampler's token steps 0..num_steps-1 into equal static [start, stop) chunks."""
  count = max(1, min(SAMPLING_CHUNKS, num_steps // MIN_SAMPLING_CHUNK))
  bounds = [round(num_steps * j / count) for j in range(count + 1)]
  return list(zip(bounds[:-1], bounds[1:]))


def invert_block(block, z, y=None, *, guidance_weights=None, guide_what: str = "ab",
                 attn_temp=1.0, y_cont=None):
  """Exact inverse of `block` (image token order in and out); traceable.

  guidance_weights: None (no guidance) or the (T-1,) weight of each token update
  (`guidance.weights`).
  """
  n, t, _ = z.shape
  sampling = block.sampling_pass(y, n, guided=guidance_weights is not None,
                                 guide_what=guide_what, attn_temp=attn_temp, y_cont=y_cont)
  x = block.permute(z.astype(jnp.float32))

  def step(i, carry):
    x, cache = carry
    token = jax.lax.dynamic_slice_in_dim(x, i, 1, axis=1)
    weight = None if guidance_weights is None else guidance_weights[i]
    a, b, cache = block.cached_params(sampling, token, i, cache, weight)
    nxt = jax.lax.dynamic_slice_in_dim(x, i + 1, 1, axis=1) * jnp.exp(a) + b
    return jax.lax.dynamic_update_slice_in_dim(x, nxt, i + 1, axis=1), cache

  # The cache grows chunk by chunk: a step reads only the keys/values of the chunks filled so
  # far, about half of what a full-length cache costs (the step is memory-bound on CPU).
  cache = block.empty_cache(sampling, n)
  for start, stop in sampling_chunks(t - 1):
    cache = cache.grown(stop)
    x, cache = jax.lax.fori_loop(start, stop, step, (x, cache))
  return block.permute(x)


def invert(model, x, y=None, *, guidance_weights=None, guide_what: str = "ab", attn_temp=1.0,
           y_cont=None):
  """Inverts every block (K−1 … 0) from tokens already scaled by √var; traceable.

  Returns (tokens, [the tokens after each block, in sampling order]).
  """
  sequence = []
  for block in reversed(model.blocks):
    x = invert_block(block, x, y, guidance_weights=guidance_weights, guide_what=guide_what,
                     attn_temp=attn_temp, y_cont=y_cont)
    sequence.append(x)
  return x, sequence


@functools.partial(nnx.jit, static_argnames=("guide_what",))
def _reverse(model, noise, y, weights, attn_temp, y_cont, *, guide_what):
  x = noise * jnp.sqrt(model.var[...])
  x, sequence = invert(model, x, y, guidance_weights=weights, guide_what=guide_what,
                       attn_temp=attn_temp, y_cont=y_cont)
  images = [model.unpatchify(noise)] + [model.unpatchify(s) for s in sequence]
  return model.unpatchify(x), jnp.stack(images)


def reverse(model, noise_tokens, y=None, *, guidance: float = 0.0, guide_what: str = "ab",
            attn_temp: float = 1.0, annealed_guidance: bool = False,
            return_sequence: bool = False, y_cont=None):
  """NHWC images from latent tokens (scaled by √var first), exactly inverting every block.

  return_sequence: also return [unpatchify(noise), after block K−1, …, after block 0].
  y_cont: AdaLN conditions (N, cond_dim); guidance contrasts them with the null embedding.
  """
  model.check_tokens(noise_tokens)
  model.check_labels(y, noise_tokens.shape[0])
  model.check_cond(y_cont, noise_tokens.shape[0])
  weights = guidance_lib.weights(model.num_tokens, guidance, guide_what, annealed_guidance)
  x, sequence = _reverse(model, jnp.asarray(noise_tokens, jnp.float32), y, weights,
                         jnp.float32(attn_temp), y_cont, guide_what=guide_what)
  return (x, sequence) if return_sequence else x
