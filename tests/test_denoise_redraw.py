"""denoise_lr scales the denoising step (1: today's σ²∇log p exactly); non-finite samples are
drawn again from fresh, reproducible latents."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import random_images, tiny_config, tiny_model
from tarflow_flax import losses, sampling, sharding
from tarflow_flax.sampling import api, batches

NOISE_STD = 0.05


@nnx.jit
def _step_before_denoise_lr(model, x, y, noise_std):
  """The denoising step as it was before denoise_lr existed (x − n·D·σ²·∇ₓ loss)."""

  def loss_fn(x):
    z, logdets, _ = model(x, y, None)
    return losses.nll_loss(z, logdets)

  return x - x.size * noise_std**2 * jax.grad(loss_fn)(x)


@pytest.fixture(scope="module")
def model():
  return tiny_model(num_classes=3)


def test_denoise_lr_one_is_the_old_step_bit_for_bit(model):
  x, y = random_images(4, model), jnp.array([0, 1, 2, 0])
  before = _step_before_denoise_lr(model, x, y, jnp.float32(NOISE_STD))
  np.testing.assert_array_equal(sampling.denoise(model, x, y, NOISE_STD), before)
  np.testing.assert_array_equal(sampling.denoise(model, x, y, NOISE_STD, lr=1.0), before)


def test_half_the_lr_moves_half_as_far_and_zero_is_off(model):
  noise = jax.random.normal(jax.random.key(0), (4, model.num_tokens, model.token_dim))
  y = jnp.array([0, 1, 2, 0])
  plain, _ = sampling.sample(model, noise, y)
  full, _ = sampling.sample(model, noise, y, denoise_std=NOISE_STD)
  half, _ = sampling.sample(model, noise, y, denoise_std=NOISE_STD, denoise_lr=0.5)
  off, _ = sampling.sample(model, noise, y, denoise_std=NOISE_STD, denoise_lr=0.0)
  moved = np.asarray(full - plain)
  assert np.abs(moved).max() > 1e-3  # The step is not negligible, so "half" means something.
  np.testing.assert_allclose(half - plain, 0.5 * moved, rtol=1e-4, atol=1e-7)
  np.testing.assert_array_equal(off, plain)


def _generate(model, mesh, **kwargs):
  return batches.generate(model, mesh, seed=3, start=10, count=5, batch=8,
                          denoise_std=NOISE_STD, **kwargs)


def test_a_non_finite_sample_is_redrawn_from_fresh_reproducible_noise(model, monkeypatch):
  mesh = sharding.make_mesh(tiny_config().mesh)
  clean, labels, info = _generate(model, mesh)
  assert info["redrawn"] == 0
  original = api.sample
  calls = []

  def nan_in_row_1_of_the_first_batch(*args, **kwargs):
    images, info = original(*args, **kwargs)
    calls.append(args[1])  # The latents.
    return (images.at[1].set(jnp.nan) if len(calls) == 1 else images), info

  monkeypatch.setattr(api, "sample", nan_in_row_1_of_the_first_batch)
  images, again_labels, info = _generate(model, mesh)
  assert np.isfinite(images).all() and info["redrawn"] == 1 and len(calls) == 2
  np.testing.assert_array_equal(again_labels, labels)
  np.testing.assert_array_equal(np.delete(images, 1, 0), np.delete(clean, 1, 0))
  # Sample 11's first redraw: fresh latents (seed 3, index 11, attempt 1), its own label.
  fresh = batches.redraw_latents(3, [11], 1, model.num_tokens, model.token_dim)
  np.testing.assert_array_equal(np.asarray(calls[1])[:1], fresh)
  expected, _ = original(model, jnp.asarray(fresh), jnp.asarray(labels[1:2]),
                         denoise_std=NOISE_STD)
  np.testing.assert_allclose(images[1], expected[0], atol=1e-5)
  assert np.abs(images[1] - clean[1]).max() > 1e-2
  # The same job again (a resumed one) writes the same images.
  calls.clear()
  np.testing.assert_array_equal(_generate(model, mesh)[0], images)


def test_samples_that_stay_non_finite_stop_the_job(model, monkeypatch):
  mesh = sharding.make_mesh(tiny_config().mesh)
  original = api.sample

  def always_nan(*args, **kwargs):
    images, info = original(*args, **kwargs)
    return images * jnp.nan, info

  monkeypatch.setattr(api, "sample", always_nan)
  with pytest.raises(FloatingPointError, match=r"samples \[10, 11, 12, 13, 14\] stayed "
                                               r"non-finite after 8 fresh draws"):
    _generate(model, mesh)


def test_the_sample_job_counts_redraws_in_sampling_json_across_a_resume(tmp_path):
  from etils import epath  # pylint: disable=g-import-not-at-top
  from tarflow_flax import sample  # pylint: disable=g-import-not-at-top
  outdir, settings = epath.Path(tmp_path), {"seed": 3, "denoise_lr": 0.5}
  sample.check_outdir(outdir, settings)
  sample.record_redrawn(outdir, 3, 2)
  sample.record_redrawn(outdir, 5, 0)
  sample.record_redrawn(outdir, 7, 1)
  assert sample.redrawn_total(outdir) == 3
  # A resumed job is not refused for the counts, and a shard written again counts once.
  sample.check_outdir(outdir, settings)
  sample.record_redrawn(outdir, 3, 2)
  assert json.loads((outdir / "sampling.json").read_text())["redrawn"] == {"3": 2, "7": 1}
