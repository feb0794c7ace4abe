"""Training loss and bits per dimension, as the reference defines them (docs/numerics.md §4, §10)."""

import math

import jax.numpy as jnp

# log of the probability mass per density unit of one of 256 bins of width 2/256 on [-1, 1].
LOG_BIN_WIDTH_INV = math.log(128.0)


def nll_loss(z, logdets):
  """The training loss: 0.5·mean(z²) over all elements − mean(logdets), the per-dimension NLL
  up to constants, in the reference's op order."""
  z = z.astype(jnp.float32)
  return 0.5 * jnp.mean(z**2) - jnp.mean(logdets)


def per_example_nll(z, logdets):
  """The training loss of each example, (N,): 0.5·mean(z²) − logdet."""
  z = z.astype(jnp.float32).reshape(z.shape[0], -1)
  return 0.5 * jnp.mean(z**2, axis=1) - logdets


def nll_to_bits_per_dim(nll):
  """Bits/dim of dequantized data in [-1, 1] from the per-dimension NLL of `nll_loss` /
  `per_example_nll` under a standard-normal prior: (nll + 0.5·log 2π + log 128) / ln 2."""
  return (nll + 0.5 * math.log(2 * math.pi) + LOG_BIN_WIDTH_INV) / math.log(2.0)


def bits_per_dim(z, logdets):
  """Per-example bits/dim of dequantized data in [-1, 1], (N,) (the reference's evaluate_bpd.py,
  whose −log p(z)/D − logdets is the per-example training loss plus the constants)."""
  return nll_to_bits_per_dim(per_example_nll(z, logdets))
