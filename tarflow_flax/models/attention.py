"""Causal multi-head attention kernels behind one function, `causal_attention`.

  xla     einsum logits (float32) → mask → softmax → einsum: the reference path.
  cudnn   `jax.nn.dot_product_attention`: cuDNN flash attention on GPUs (bf16/fp16), XLA's own
          implementation elsewhere.
  splash  the Pallas TPU splash-attention kernel with a causal mask (block-sparse: masked tiles
          are skipped). On other platforms it runs in Pallas interpret mode (tests only: slow).
  auto    splash on TPU, cudnn on GPU, xla otherwise.

Every implementation takes q already multiplied by 64^-0.5 / temperature (the scale is folded into
q, so the kernels need no per-example scale) and returns (N, T, H, D) in the compute dtype.
In float32, the matmuls run at HIGHEST precision (no bf16 passes on TPU, no TF32 on GPU).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# What config.model.attention may name; "auto" picks by platform (`resolve`).
IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash")
MASK_VALUE = -1e30  # finite: a fully masked row never occurs, and -inf would make NaN grads.
SPLASH_BLOCK = 512  # Largest tile; smaller sequences use one tile.
SPLASH_MIN_BLOCK = 128  # The TPU kernel's tiles are multiples of 128 tokens.


def target_platform() -> str:
  """The platform being compiled for: the current mesh's devices (a TPU topology compiled on a CPU
  host by compile_check), else the default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and mesh.abstract_device is not None:
    return mesh.abstract_device.platform
  return jax.default_backend()


def splash_supports(num_tokens: int) -> bool:
  return num_tokens % SPLASH_MIN_BLOCK == 0


def resolve(implementation: str, num_tokens: int, platform: str | None = None) -> str:
  """The concrete implementation for 'auto' on `platform` (default: `target_platform()`): splash
  on TPU when the sequence tiles by 128 (XLA otherwise), cuDNN on GPU, XLA elsewhere."""
  if implementation != "auto":
    return implementation
  platform = platform or target_platform()
  if platform == "tpu":
    return "splash" if splash_supports(num_tokens) else "xla"
  return "cudnn" if platform in ("gpu", "cuda") else "xla"


def matmul_precision(dtype):
  """HIGHEST for float32 compute (what the float32 presets promise), the default otherwise."""
  return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def masked_softmax_attention(q, k, v, visible, precision, *, heads_first: bool):
  """The reference math: float32 logits, mask, float32 softmax, probabilities × values.

  heads_first: q (N, H, Tq, D), k/v (N, H, Tk, D) (the KV cache's layout) → (N, Tq, H, D);
  otherwise all (N, T, H, D). visible broadcasts to (N, H, Tq, Tk). XLA picks the dot layouts,
  so neither layout costs a transposed copy.
  """
  qk, pv = (("nhqd,nhkd->nhqk", "nhqk,nhkd->nqhd") if heads_first else
            ("nqhd,nkhd->nhqk", "nhqk,nkhd->nqhd"))
  logits = jnp.einsum(qk, q, k, preferred_element_type=jnp.float32, precision=precision)
  probs = jax.nn.softmax(jnp.where(visible, logits, MASK_VALUE), axis=-1)
  return jnp.einsum(pv, probs.astype(q.dtype), v, precision=precision)


def _xla(q, k, v):
  t = q.shape[1]
  causal = jnp.tril(jnp.ones((t, t), jnp.bool_))
  return masked_softmax_attention(q, k, v, causal, matmul_precision(q.dtype), heads_first=False)


def _cudnn(q, k, v):
  on_gpu = target_platform() in ("gpu", "cuda") and q.dtype in (jnp.bfloat16, jnp.float16)
  # Outside cuDNN the function traces plain einsums: the precision context reaches them.
  with jax.default_matmul_precision("highest" if q.dtype == jnp.float32 else None):
    return jax.nn.dot_product_attention(q, k, v, scale=1.0, is_causal=True,
                                        implementation="cudnn" if on_gpu else None)


@functools.lru_cache(maxsize=None)
def _splash_kernel(heads: int, tokens: int, interpret: bool):
  # pylint: disable=g-import-not-at-top
  from jax.experimental.pallas.ops.tpu import splash_attention as splash
  block = SPLASH_BLOCK if tokens % SPLASH_BLOCK == 0 else SPLASH_MIN_BLOCK
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                            block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                            block_q_dq=block, block_kv_dq=block)
  mask = splash.MultiHeadMask([splash.CausalMask((tokens, tokens))] * heads)
  return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                mask_value=MASK_VALUE, interpret=interpret)


def _splash(q, k, v):
  _, t, h, _ = q.shape
  if not splash_supports(t):
    raise ValueError(f"splash attention needs a token count divisible by {SPLASH_MIN_BLOCK}, "
                     f"got {t}; use model.attention='xla' or 'auto'")
  kernel = _splash_kernel(h, t, target_platform() != "tpu")
  heads_first = lambda a: a.transpose(0, 2, 1, 3)
  out = jax.vmap(kernel)(heads_first(q), heads_first(k), heads_first(v))
  return heads_first(out.astype(q.dtype))


def _batch_sharded(fn, q, k, v):
  """Runs `fn` per device shard of the batch when a mesh is set: a Pallas kernel is opaque to the
  SPMD partitioner, which would otherwise gather the whole batch onto every device."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or all(size == 1 for size in mesh.shape.values()):
    return fn(q, k, v)
  from tarflow_flax import sharding  # pylint: disable=g-import-not-at-top
  spec = sharding.logical_spec(("batch", "tokens", "heads", None), q.shape)
  return jax.shard_map(fn, in_specs=(spec,) * 3, out_specs=spec, check_vma=False)(q, k, v)


def causal_attention(q, k, v, implementation: str = "auto"):
  """Causal self-attention. q (pre-scaled), k, v: (N, T, H, D) → (N, T, H, D)."""
  implementation = resolve(implementation, q.shape[1])
  if implementation == "xla":
    return _xla(q, k, v)
  if implementation == "cudnn":
    return _cudnn(q, k, v)
  if implementation == "splash":
    return _batch_sharded(_splash, q, k, v)
  raise ValueError(f"unknown attention implementation {implementation!r}")


def scaled_query(q, temperature, head_dim: int):
  """q · head_dim^-0.5 / temperature (scalar or one per example), in q's dtype."""
  temperature = jnp.asarray(temperature, jnp.float32)
  if temperature.ndim == 1:  # One temperature per example.
    temperature = temperature.reshape((-1,) + (1,) * (q.ndim - 1))
  return (q.astype(jnp.float32) * (np.float32(head_dim**-0.5) / temperature)).astype(q.dtype)
