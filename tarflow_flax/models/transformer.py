"""Pre-LN causal transformer layer of a TarFlow block, with a KV-cached single-token step.

Numerics follow the reference (docs/numerics.md §2): LayerNorm eps 1e-5 computed in float32,
exact-erf GELU, fused QKV with head width 64, logits scaled by 64^-0.5 / temperature, softmax in
float32.
Matmuls run in the compute dtype; the residual stream stays float32 (as under torch autocast, where
a bf16 Linear output added to the f32 stream promotes to f32).

Every parameter carries logical axis names (`out_sharding` metadata); `tarflow_flax.sharding` maps
them onto mesh axes in one place.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from tarflow_flax import sharding
from tarflow_flax.models import attention as attention_lib

HEAD_DIM = 64  # Fixed by the reference: heads = channels // 64.
LAYER_NORM_EPS = 1e-5
# What a rematerialised layer keeps from the forward pass (None: only its input). Linear outputs
# are dot_generals without batch dimensions; the attention einsums have batch dimensions (and the
# splash kernel is no dot), so 'save_matmuls' recomputes attention, norms and GELU only.
REMAT_POLICIES = {"full": None,
                  "save_matmuls": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def _torch_default_init(fan_in: int):
  """torch.nn.Linear's default: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = fan_in**-0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def linear(in_features: int, out_features: int, axes: tuple[str, str], *, dtype,
           zero_kernel: bool = False, zero_bias: bool = False, rngs: nnx.Rngs) -> nnx.Linear:
  """A biased Linear: float32 parameters, `dtype` compute, logical axis names, torch init
  (zero_kernel / zero_bias: that parameter starts at zero instead)."""
  init = _torch_default_init(in_features)
  zeros = jax.nn.initializers.zeros
  precision = jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None
  return nnx.Linear(in_features, out_features, dtype=dtype, param_dtype=jnp.float32,
                    precision=precision, kernel_init=zeros if zero_kernel else init,
                    bias_init=zeros if zero_bias else init,
                    kernel_metadata={"out_sharding": axes},
                    bias_metadata={"out_sharding": axes[1:]}, rngs=rngs)


def layer_norm(features: int, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """LayerNorm computed in float32 (callers cast the result back to the compute dtype)."""
  return nnx.LayerNorm(features, epsilon=LAYER_NORM_EPS, dtype=jnp.float32,
                       param_dtype=jnp.float32, use_fast_variance=False,
                       scale_metadata={"out_sharding": ("norm",)},
                       bias_metadata={"out_sharding": ("norm",)}, rngs=rngs)


def batch_sharded(x):
  """Pins an activation to FSDP's layout: batch split over the data-parallel axes, features whole.

  Left to itself, XLA's GPU partitioner gave the matmul inputs of scanned layers the FSDP-sharded
  kernels' feature split instead, and all-reduced every matmul output: 30.7 GB per imagenet64
  step on 8 H100s, 0.16 GB with these constraints (benchmarks/README.md). TPU programs are
  unchanged. A no-op without a mesh.
  """
  return sharding.constrain(x, ("batch",) + (None,) * (x.ndim - 1))


def modulate(normed, modulation):
  """AdaLN: LN(x)·(1 + scale) + shift with a per-example (scale, shift), each (N, C) float32;
  modulation None leaves the LayerNorm output untouched (no extra ops)."""
  if modulation is None:
    return normed
  scale, shift = modulation
  return normed * (1.0 + scale[:, None, :]) + shift[:, None, :]


class KVCache(NamedTuple):
  """Keys and values of the tokens fed so far, for every layer of one block.

  k, v: one (N, heads, T, 64) array per layer, in the compute dtype. Head-major, so the attention
  matmuls read the cache in place (a token-major cache costs a transposed copy per layer and step,
  ~3× slower sampling on CPU); one array per layer, so that a layer's update is in place and its
  read is the array itself (slicing a stacked (layers, …) cache copied it on every token).
  Position t holds token t of the block's own (possibly flipped) order once it has been fed;
  later positions are masked out. The samplers grow it (`grown`) chunk by chunk (sequential) or
  segment by segment (GS-Jacobi), so a step reads only the positions filled so far.
  """
  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]

  @classmethod
  def zeros(cls, num_layers: int, batch: int, num_tokens: int, channels: int, dtype):
    shape = (batch, channels // HEAD_DIM, num_tokens, HEAD_DIM)
    return cls(tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
               tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)))

  def grown(self, num_tokens: int) -> "KVCache":
    """The cache extended with zeros to `num_tokens` positions (a copy: between loops only)."""
    def grow(a):
      return jnp.pad(a, ((0, 0), (0, 0), (0, num_tokens - a.shape[2]), (0, 0)))
    return KVCache(tuple(map(grow, self.k)), tuple(map(grow, self.v)))

  def updated(self, layer: int, position, k, v) -> "KVCache":
    """Writes k, v (N, heads, S, 64) of `layer` at token `position`.. (in place in a loop)."""
    def write(arrays, new):
      written = jax.lax.dynamic_update_slice(arrays[layer], new.astype(arrays[layer].dtype),
                                             (0, 0, position, 0))
      return arrays[:layer] + (written,) + arrays[layer + 1:]
    return KVCache(write(self.k, k), write(self.v, v))


class Attention(nnx.Module):
  """Multi-head self-attention with a pre-LayerNorm."""

  def __init__(self, channels: int, *, dtype, rngs: nnx.Rngs):
    self.num_heads = channels // HEAD_DIM
    self.dtype = dtype
    self.norm = layer_norm(channels, rngs=rngs)
    self.qkv = linear(channels, 3 * channels, ("embed", "qkv"), dtype=dtype, rngs=rngs)
    self.proj = linear(channels, channels, ("heads", "embed"), dtype=dtype, rngs=rngs)
    self.implementation = "auto"  # Set from config.model.attention by TarFlow.

  def _qkv(self, x, modulation=None):
    n, t, c = x.shape
    h = batch_sharded(modulate(self.norm(x.astype(jnp.float32)), modulation).astype(self.dtype))
    # Feature layout [q | k | v], each head-major (h·64 + d), as the reference's reshape.
    qkv = self.qkv(h).reshape(n, t, 3, self.num_heads, HEAD_DIM)
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

  def __call__(self, x, temperature=1.0, modulation=None):
    """Causal attention over the whole sequence (training / density evaluation)."""
    q, k, v = self._qkv(x, modulation)
    q = attention_lib.scaled_query(q, temperature, HEAD_DIM)
    out = attention_lib.causal_attention(q, k, v, self.implementation)
    return self.proj(batch_sharded(out.reshape(out.shape[:2] + (-1,))))

  def step(self, x, cache: KVCache, layer: int, position: int | jax.Array,
           temperature=1.0, modulation=None):
    """Attends S new tokens at `position`.. to the cached tokens of this layer, causally.

    x: (N, S, C) (S = 1 for the sequential sampler, a segment for GS-Jacobi). Writes the tokens'
    keys/values into `cache` at layer `layer` (static), tokens position..position+S (an in-place
    update when the cache is a loop carry); query s sees cached positions <= position + s.
    Returns (out, cache).
    """
    q, k, v = (a.transpose(0, 2, 1, 3) for a in self._qkv(x, modulation))  # (N, H, S, D)
    cache = cache.updated(layer, position, k, v)
    keys, values = cache.k[layer], cache.v[layer]
    q = attention_lib.scaled_query(q, temperature, HEAD_DIM)
    query_pos = position + jnp.arange(x.shape[1])
    visible = jnp.arange(keys.shape[2])[None, :] <= query_pos[:, None]
    out = attention_lib.masked_softmax_attention(q, keys, values, visible,
                                                 attention_lib.matmul_precision(self.dtype),
                                                 heads_first=True)
    return self.proj(out.reshape(out.shape[:2] + (-1,))), cache


class MLP(nnx.Module):
  """Pre-LayerNorm MLP: Linear(C→4C), exact GELU, Linear(4C→C)."""

  def __init__(self, channels: int, *, dtype, rngs: nnx.Rngs):
    self.dtype = dtype
    self.norm = layer_norm(channels, rngs=rngs)
    self.up = linear(channels, 4 * channels, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.down = linear(4 * channels, channels, ("mlp", "embed"), dtype=dtype, rngs=rngs)

  def __call__(self, x, modulation=None):
    h = batch_sharded(modulate(self.norm(x.astype(jnp.float32)), modulation).astype(self.dtype))
    return self.down(batch_sharded(jax.nn.gelu(self.up(h), approximate=False)))


class TransformerLayer(nnx.Module):
  """x + Attn(LN(x)), then + MLP(LN(·)); no final norm.

  adaln: build the AdaLN projection (C → scale and shift of both LayerNorms) that a conditioning
  vector `cond` (N, C) drives. Zero-initialised, so a fresh layer ignores `cond`; without it the
  layer has no extra parameters (reference checkpoints and goldens are unchanged).
  """

  def __init__(self, channels: int, *, dtype, adaln: bool = False, rngs: nnx.Rngs):
    self.attention = Attention(channels, dtype=dtype, rngs=rngs)
    self.mlp = MLP(channels, dtype=dtype, rngs=rngs)
    self.adaln = nnx.data(None)
    if adaln:
      self.adaln = linear(channels, 4 * channels, ("embed", "adaln"), dtype=dtype,
                          zero_kernel=True, zero_bias=True, rngs=rngs)

  def modulations(self, cond):
    """(attention, MLP) LayerNorm modulations from `cond` (N, C), or (None, None)."""
    if cond is None or self.adaln is None:
      return None, None
    scale1, shift1, scale2, shift2 = jnp.split(self.adaln(cond).astype(jnp.float32), 4, -1)
    return (scale1, shift1), (scale2, shift2)

  def __call__(self, x, temperature=1.0, cond=None):
    attn_mod, mlp_mod = self.modulations(cond)
    x = x + self.attention(x, temperature, attn_mod)
    return x + self.mlp(x, mlp_mod)

  def step(self, x, cache: KVCache, layer, position, temperature=1.0, cond=None):
    attn_mod, mlp_mod = self.modulations(cond)
    attn, cache = self.attention.step(x, cache, layer, position, temperature, attn_mod)
    x = x + attn
    return x + self.mlp(x, mlp_mod), cache


def make_layer_stack(num_layers: int, channels: int, *, dtype, adaln: bool = False,
                     rngs: nnx.Rngs):
  """`num_layers` TransformerLayers with parameters stacked on a leading 'layers' axis."""

  @nnx.split_rngs(splits=num_layers)
  @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def create(rngs):
    return TransformerLayer(channels, dtype=dtype, adaln=adaln, rngs=rngs)

  return create(rngs)


def apply_layer_stack(layers: TransformerLayer, x, temperature=1.0, *, remat: bool = False,
                      remat_policy: str = "full", scan: bool = True, cond=None):
  """Applies stacked layers in order: `nnx.scan` (one compiled layer body) or unrolled.

  temperature: attention temperature, a scalar or one per example (N,).
  cond: AdaLN conditioning vector (N, C) or None.
  remat_policy: what remat saves for the backward pass (REMAT_POLICIES above).
  """

  def body(layer, h):
    return layer(h, temperature, cond)

  # graph=False (tree mode): the stack is a plain pytree here, which also lets these transforms
  # run inside raw JAX transforms (jax.grad, lax loops) that close over the model.
  if remat:
    body = nnx.remat(body, graph=False, policy=REMAT_POLICIES[remat_policy])
  if scan:
    return nnx.scan(body, in_axes=(0, nnx.Carry), out_axes=nnx.Carry, graph=False)(layers, x)
  for layer in unstack_layers(layers):
    x = body(layer, x)
  return x


def unstack_layers(layers: TransformerLayer) -> tuple[TransformerLayer, ...]:
  """The stacked layers as separate modules, for a token loop to close over.

  Call it before the loop: XLA does not hoist slices of the stacked weights out of a loop body,
  so slicing per token (as `nnx.merge` inside the body did) copied every layer's weights on every
  token: 12.6 MB per step at width 256, ~1/6 of the sequential sampler's time on CPU.
  """
  graphdef, state = nnx.split(layers)
  num_layers = jax.tree.leaves(state)[0].shape[0]
  states = [jax.tree.map(lambda p, i=i: p[i], state) for i in range(num_layers)]
  return tuple(nnx.merge(graphdef, s) for s in states)


def step_layers(layers: tuple[TransformerLayer, ...], x, cache: KVCache, position,
                temperature=1.0, cond=None):
  """Tokens at `position`.. through `layers` (from `unstack_layers`), writing their keys/values
  into `cache`. Unrolled with static layer indices, so each layer's cache row is read and
  written in place (a scan's dynamic per-layer slices copied them on every token)."""
  for index, layer in enumerate(layers):
    x, cache = layer.step(x, cache, index, position, temperature, cond)
  return x, cache
