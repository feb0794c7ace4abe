"""Parallel inverses of a flow block: Jacobi and GS-Jacobi fixed-point iteration.

Inverting a block (in its token order) solves x[0] = z[0], x[t] = z[t]·exp(a_{t-1}(x_{<t})) +
b_{t-1}(x_{<t}): a triangular fixed point. One Jacobi sweep updates every token of a segment at once
from the previous iterate with one causal pass, and after k sweeps at least the first k tokens of
the segment are exact, so S sweeps give the exact inverse of a segment of S tokens.

GS-Jacobi splits the block into segments solved one after another (Gauss-Seidel across segments,
Jacobi inside). The solved prefix lives in a KV cache (`transformer.KVCache`), so a sweep feeds only
the segment's S inputs (tokens s0−1 … s1−2) through the layers. Jacobi is the one-segment case.

A segment stops when the relative residual max|x⁺ − x| / max|x⁺| falls to `tol` or after its
iteration budget. Guidance, annealing and attention temperature are exactly those of the sequential
sampler (conditional and unconditional passes batched together).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tarflow_flax.models import flow_block
from tarflow_flax.sampling import guidance as guidance_lib
from tarflow_flax.sampling import sequential

DEFAULT_TOL = 1e-6


@dataclasses.dataclass(frozen=True)
class BlockPlan:
  """How to invert one block: segment boundaries, per-segment budgets, initial guess.

  boundaries: increasing token indices starting at 1 and ending at T; segment i covers
  [boundaries[i], boundaries[i+1]) (token 0 is copied). max_iters: one budget per segment (None:
  the segment length, which is always exact). init: 'latent' (start from z) or 'zeros'.
  clamp: optional |x| bound applied to iterates (a heuristic against divergence; off by default).
  """
  boundaries: tuple[int, ...]
  max_iters: tuple[int, ...] | None = None
  init: str = "latent"
  clamp: float | None = None

  @classmethod
  def uniform(cls, num_tokens: int, num_segments: int = 1, **kwargs) -> "BlockPlan":
    num_segments = max(1, min(num_segments, num_tokens - 1))
    edges = np.linspace(1, num_tokens, num_segments + 1).round().astype(int)
    return cls(tuple(int(e) for e in edges), **kwargs)

  def budgets(self) -> tuple[int, ...]:
    lengths = np.diff(self.boundaries)
    if self.max_iters is None:
      return tuple(int(n) for n in lengths)
    if len(self.max_iters) != len(lengths):
      raise ValueError(f"max_iters has {len(self.max_iters)} entries for {len(lengths)} segments")
    return tuple(int(min(m, n)) for m, n in zip(self.max_iters, lengths))

  def validate(self, num_tokens: int) -> None:
    b = self.boundaries
    if b[0] != 1 or b[-1] != num_tokens or any(x >= y for x, y in zip(b, b[1:])):
      raise ValueError(f"segment boundaries {b} must increase from 1 to T={num_tokens}")
    if self.init not in ("latent", "zeros"):
      raise ValueError(f"init must be 'latent' or 'zeros', got {self.init!r}")


def invert_block(block: flow_block.FlowBlock, z, y, plan: BlockPlan, *, tol: float,
                 guidance_weights=None, guide_what: str = "ab", attn_temp=1.0, y_cont=None):
  """Inverts `block` (image token order in and out) by GS-Jacobi; traceable.

  Returns (x, iterations per segment (num_segments,) int32).
  """
  n, t, _ = z.shape
  plan.validate(t)
  if len(plan.boundaries) == t and plan.clamp is None:
    # One token per segment is the sequential inverse: run its single fori_loop rather than
    # T−1 separately compiled while loops.
    x = sequential.invert_block(block, z, y, guidance_weights=guidance_weights,
                                guide_what=guide_what, attn_temp=attn_temp, y_cont=y_cont)
    return x, jnp.ones((t - 1,), jnp.int32)
  guided = guidance_weights is not None
  sampling = block.sampling_pass(y, n, guided=guided, guide_what=guide_what,
                                 attn_temp=attn_temp, y_cont=y_cont)
  z_perm = block.permute(z.astype(jnp.float32))
  if guided:  # Weight for the update of token i+1 is guidance_weights[i]; pad token 0.
    weights = jnp.concatenate([jnp.zeros((1,), jnp.float32), guidance_weights])
  x = z_perm if plan.init == "latent" else jnp.zeros_like(z_perm).at[:, 0].set(z_perm[:, 0])
  # The cache grows segment by segment (like the sequential sampler's chunks): a sweep over
  # tokens s0..s1−1 feeds positions s0−1..s1−2 and attends over those filled so far, not all T.
  cache = block.empty_cache(sampling, n)
  counts = []
  for (s0, s1), budget in zip(zip(plan.boundaries, plan.boundaries[1:]), plan.budgets()):
    cache = cache.grown(s1 - 1)
    z_seg = z_perm[:, s0:s1]
    weight = weights[s0:s1][None, :, None] if guided else None

    def sweep(x, cache, s0=s0, s1=s1, z_seg=z_seg, weight=weight):
      a, b, cache = block.cached_params(sampling, x[:, s0 - 1:s1 - 1], s0 - 1, cache, weight)
      new = z_seg * jnp.exp(a) + b
      if plan.clamp is not None:
        new = jnp.clip(new, -plan.clamp, plan.clamp)
      return new, cache

    def not_done(carry, budget=budget):
      _, _, k, residual = carry
      return (k < budget) & (residual > tol)

    def body(carry, s0=s0, s1=s1, sweep=sweep):
      x, cache, k, _ = carry
      new, cache = sweep(x, cache)
      old = x[:, s0:s1]
      residual = jnp.max(jnp.abs(new - old)) / jnp.maximum(jnp.max(jnp.abs(new)), 1e-30)
      return x.at[:, s0:s1].set(new), cache, k + 1, residual

    x, cache, k, _ = jax.lax.while_loop(not_done, body,
                                        (x, cache, jnp.int32(0), jnp.float32(jnp.inf)))
    counts.append(k)
  return block.permute(x), jnp.stack(counts)


def invert(model, noise_tokens, y, plans: Sequence[BlockPlan], *, tol: float,
           guidance_weights=None, guide_what: str = "ab", attn_temp=1.0, y_cont=None):
  """All blocks (sampling order K−1 … 0) from √var-scaled noise; returns (tokens, [counts])."""
  x = noise_tokens * jnp.sqrt(model.var[...])
  counts = []
  for block, plan in zip(reversed(model.blocks), plans):
    x, count = invert_block(block, x, y, plan, tol=tol, guidance_weights=guidance_weights,
                            guide_what=guide_what, attn_temp=attn_temp, y_cont=y_cont)
    counts.append(count)
  return x, counts


@functools.partial(nnx.jit, static_argnames=("plans", "guide_what"))
def _parallel(model, noise, y, weights, attn_temp, tol, y_cont, *, plans, guide_what):
  tokens, counts = invert(model, noise, y, plans, tol=tol, guidance_weights=weights,
                          guide_what=guide_what, attn_temp=attn_temp, y_cont=y_cont)
  return model.unpatchify(tokens), counts


def run_plans(model, noise_tokens, y, plans, *, guidance=0.0, guide_what="ab", attn_temp=1.0,
              annealed_guidance=False, tol=DEFAULT_TOL, y_cont=None):
  """Parallel inverse with explicit per-block plans → (images, iterations per block)."""
  weights = guidance_lib.weights(model.num_tokens, guidance, guide_what, annealed_guidance)
  images, counts = _parallel(model, jnp.asarray(noise_tokens, jnp.float32), y, weights,
                             jnp.float32(attn_temp), jnp.float32(tol), y_cont, plans=tuple(plans),
                             guide_what=guide_what)
  return images, [[int(c) for c in jax.device_get(count)] for count in counts]
