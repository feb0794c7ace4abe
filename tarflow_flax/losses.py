"""Training loss and bits per dimension, exactly as the reference (docs/numerics.md §4, §10)."""

import math

import jax.numpy as jnp

# log of the probability mass per density unit of one of 256 bins of width 2/256 on [-1, 1].
LOG_BIN_WIDTH_INV = math.log(128.0)


def nll_loss(z, logdets):
  """0.5·mean(z²) over all elements − mean(logdets): per-dimension NLL up to constants."""
  z = z.astype(jnp.float32)
  return 0.5 * jnp.mean(z**2) - jnp.mean(logdets)


def bits_per_dim(z, logdets):
  """Per-example bits/dim of dequantized data in [-1, 1] under a standard-normal prior, (N,).

  D = T·Cp = C·H·W. Follows evaluate_bpd.py's order of operations:
  log p(z) = Σ −0.5·(z² + log 2π) − D·log 128;  bpd = (−log p(z)/D − logdets) / ln 2.
  """
  z = z.astype(jnp.float32).reshape(z.shape[0], -1)
  num_dims = z.shape[1]
  log_pz = jnp.sum(-0.5 * (z**2 + math.log(2 * math.pi)), axis=1) - num_dims * LOG_BIN_WIDTH_INV
  return (-log_pz / num_dims - logdets) / math.log(2.0)
