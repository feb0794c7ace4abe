"""Soft-clipped log-scales (model.soft_clip): a ← c·tanh(a/c) everywhere a is used."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_images, rel_err, tiny_model
from tarflow_flax import config_lib, sampling
from tarflow_flax.sampling import sequential
from conftest import tiny_config

CLIP = 0.1


def clipped_model(soft_clip=CLIP, **kwargs):
  # Raw log-scales reach beyond the clip (checked below): the tanh acts in its nonlinear range.
  return tiny_model(in_channels=3, scale=1.0, soft_clip=soft_clip, **kwargs)


def _log_scales(model, x):
  block = model.blocks[0]
  a, _ = block.transform_params(block.permute(model.patchify(x)), None)
  return a


def test_log_scales_are_bounded_and_the_clip_acts():
  x = random_images(4, clipped_model())
  raw = _log_scales(clipped_model(soft_clip=0.0), x)
  a = _log_scales(clipped_model(), x)
  assert float(jnp.abs(raw).max()) > 2 * CLIP  # Without the clip the bound is exceeded...
  assert float(jnp.abs(a).max()) <= np.float32(CLIP)  # ...with it, never (c in float32).
  np.testing.assert_allclose(a, CLIP * jnp.tanh(raw / CLIP), rtol=1e-5, atol=1e-6)


def test_soft_clip_zero_is_bit_identical_to_no_clip():
  x = random_images(4, clipped_model())
  off = clipped_model(soft_clip=0.0)
  default = tiny_model(in_channels=3, scale=1.0)  # Built without the argument at all.
  for got, want in zip(off(x)[:2], default(x)[:2]):
    np.testing.assert_array_equal(got, want)
  noise = jax.random.normal(jax.random.key(1), (4, off.num_tokens, off.token_dim))
  np.testing.assert_array_equal(sequential.reverse(off, noise), sequential.reverse(default, noise))


def test_inverse_is_exact_with_the_clip():
  model = clipped_model(num_classes=3)
  x = random_images(4, model)
  y = jnp.array([0, 1, 2, -1])
  z, _, _ = model(x, y)
  np.testing.assert_allclose(sequential.reverse(model, z / jnp.sqrt(model.var[...]), y), x,
                             atol=1e-5, rtol=0)
  noise = jax.random.normal(jax.random.key(1), (4, model.num_tokens, model.token_dim))
  seq = sequential.reverse(model, noise, jnp.array([0, 1, 2, 0]), guidance=1.0)
  for method in ("jacobi", "gs_jacobi"):  # Every sampler uses the clipped log-scales.
    par, _ = sampling.sample(model, noise, jnp.array([0, 1, 2, 0]), method=method, tol=0.0,
                             guidance=1.0)
    assert rel_err(par, seq) <= 1e-5, method


def test_logdet_equals_bruteforce_jacobian_with_the_clip():
  model = tiny_model(in_channels=1, img_size=4, patch_size=2, num_blocks=3, layers_per_block=2,
                     scale=1.0, soft_clip=CLIP)
  x = random_images(2, model)
  _, logdets, _ = model(x)
  num_dims = x[0].size
  for i in range(2):
    flow = lambda image: model(image[None])[0].reshape(-1)
    jacobian = jax.jacfwd(flow)(x[i]).reshape(num_dims, num_dims)
    sign, logabsdet = jnp.linalg.slogdet(jacobian)
    assert sign != 0
    np.testing.assert_allclose(num_dims * logdets[i], logabsdet, rtol=1e-4, atol=1e-4)


def test_negative_soft_clip_is_refused():
  with pytest.raises(config_lib.ConfigError, match=r"model\.soft_clip=-1\.0: must be >= 0"):
    config_lib.validate(tiny_config(**{"model.soft_clip": -1.0}))
