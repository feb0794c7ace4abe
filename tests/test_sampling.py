"""Parallel samplers equal the sequential inverse; iteration bounds; auto keeps its bound."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from conftest import rel_err, tiny_model
from tarflow_flax import sampling, sharding
from tarflow_flax.sampling import batches, jacobi, strategy

EXACT = 1e-4  # Stated bound for tight-tolerance parallel samplers vs sequential (relative).


def _noise(model, n=3, seed=0):
  return jax.random.normal(jax.random.key(seed), (n, model.num_tokens, model.token_dim))


@pytest.mark.parametrize("nvp,num_classes,kwargs", [
    (True, 0, {}),
    (False, 0, dict(guidance=0.5, attn_temp=0.5)),           # Temperature guidance, uncond.
    (True, 3, dict(guidance=1.5, attn_temp=0.7, annealed_guidance=True)),
    (False, 3, dict(guidance=1.0, guide_what="a")),
    (True, 3, dict(guidance=2.0, guide_what="b")),
])
def test_jacobi_and_gs_jacobi_equal_sequential(nvp, num_classes, kwargs):
  model = tiny_model(nvp=nvp, num_classes=num_classes, in_channels=3, img_size=8, patch_size=2,
                     num_blocks=3, layers_per_block=2, scale=0.3)
  noise = _noise(model)
  y = jnp.array([0, 1, 2]) if num_classes else None
  exact, _ = sampling.sample(model, noise, y, **kwargs)
  t = model.num_tokens
  for method, options in [("jacobi", {}), ("gs_jacobi", {"num_segments": 3})]:
    images, info = sampling.sample(model, noise, y, method=method, tol=0.0, **kwargs, **options)
    assert rel_err(images, exact) <= EXACT, (method, options)
    for plan, per_segment in zip(info["plans"], info["segment_iterations"]):
      assert all(k <= n for k, n in zip(per_segment, np.diff(plan.boundaries)))
    assert all(k <= t - 1 for k in info["iterations"])


def test_any_segmentation_and_zero_init_are_exact():
  model = tiny_model(in_channels=1, img_size=8, patch_size=2, num_blocks=2, layers_per_block=1,
                     scale=0.3)
  noise = _noise(model)
  exact, _ = sampling.sample(model, noise)
  plans = (sampling.BlockPlan((1, 2, 9, 16)), sampling.BlockPlan((1, 16), init="zeros"))
  images, info = sampling.sample(model, noise, method="gs_jacobi", plans=plans, tol=0.0)
  assert rel_err(images, exact) <= EXACT
  assert info["segment_iterations"][0][0] == 1  # A one-token segment needs exactly one sweep.


def test_near_identity_blocks_converge_in_a_few_sweeps():
  model = tiny_model(in_channels=1, img_size=8, patch_size=2, num_blocks=2, layers_per_block=1,
                     scale=1e-4)
  noise = _noise(model)
  exact, _ = sampling.sample(model, noise)
  images, info = sampling.sample(model, noise, method="jacobi", tol=1e-6)
  assert max(info["iterations"]) <= 4
  assert rel_err(images, exact) <= EXACT


def test_tolerance_and_budget_stop_early():
  model = tiny_model(in_channels=1, img_size=8, patch_size=2, num_blocks=2, layers_per_block=1,
                     scale=0.3)
  noise = _noise(model)
  _, info = sampling.sample(model, noise, method="jacobi", max_iters=3)
  assert info["iterations"] == [3, 3]
  _, loose = sampling.sample(model, noise, method="jacobi", tol=1e-2)
  _, tight = sampling.sample(model, noise, method="jacobi", tol=1e-7)
  assert sum(loose["iterations"]) < sum(tight["iterations"])


def test_auto_stays_within_its_bound_and_saves_sweeps():
  model = tiny_model(in_channels=1, img_size=8, patch_size=2, num_blocks=2, layers_per_block=1,
                     scale=0.05)
  noise = _noise(model, n=4)
  exact, _ = sampling.sample(model, noise)
  images, info = sampling.sample(model, noise, method="auto", tol=1e-5, max_deviation=1e-3,
                                 candidate_segments=(1, 3, -1), repeats=1)
  assert info["calibration"]["calibration_deviation"] <= 1e-3
  assert rel_err(images, exact) <= 1e-3
  blocks = info["calibration"]["blocks"]
  assert len(blocks) == 2 and all(b["segments"] in (1, 3, model.num_tokens - 1) for b in blocks)
  for plan, per_segment in zip(info["plans"], info["segment_iterations"]):
    assert all(k <= budget for k, budget in zip(per_segment, plan.budgets()))


def test_denoise_option_and_bad_method():
  model = tiny_model()
  noise = _noise(model)
  plain, _ = sampling.sample(model, noise)
  denoised, _ = sampling.sample(model, noise, denoise_std=0.05)
  np.testing.assert_allclose(denoised, sampling.denoise(model, plain, None, 0.05), atol=1e-6)
  with pytest.raises(ValueError, match="method must be one of"):
    sampling.sample(model, noise, method="newton")


def _trained_tiny_model(steps=200):
  """A tiny conditional model trained briefly on smooth random images (correlated tokens), so its
  blocks are a learned, non-trivial autoregressive map rather than random weights."""
  import optax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from tarflow_flax import losses, models  # pylint: disable=g-import-not-at-top
  model = models.TarFlow(in_channels=1, img_size=8, patch_size=2, channels=64, num_blocks=2,
                         layers_per_block=1, num_classes=2, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, key):
    k1, k2, k3 = jax.random.split(key, 3)
    coarse = jax.random.normal(k1, (32, 2, 2, 1))
    x = jnp.tanh(jax.image.resize(coarse, (32, 8, 8, 1), "linear"))
    x = x + 0.05 * jax.random.normal(k2, x.shape)
    y = jax.random.randint(k3, (32,), 0, 2)

    def loss_fn(model):
      z, logdets, _ = model(x, y)
      return losses.nll_loss(z, logdets)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  first = float(train_step(model, optimizer, jax.random.key(0)))
  for step in range(1, steps):
    loss = train_step(model, optimizer, jax.random.key(step))
  assert float(loss) < first - 0.5  # It did learn.
  return model


def test_auto_within_bound_on_trained_model_with_defaults():
  model = _trained_tiny_model()
  noise = _noise(model, n=8, seed=3)
  y = jnp.arange(8) % 2
  kwargs = dict(guidance=1.0, attn_temp=0.8, annealed_guidance=True)
  exact, _ = sampling.sample(model, noise, y, **kwargs)
  images, info = sampling.sample(model, noise, y, method="auto", **kwargs)  # Defaults only.
  bound = info["calibration"]["max_deviation"]
  assert info["calibration"]["calibration_deviation"] <= bound
  assert rel_err(images, exact) <= bound  # Also on the latents beyond the calibration batch.
  # Parallel plans only (a CPU would otherwise pick the sequential one, and saturated ones would
  # be replaced by it), with a loose tol: the budgets/tolerance fallback must still keep the bound.
  images, info = sampling.sample(model, noise, y, method="auto", tol=1e-3, max_deviation=1e-4,
                                 candidate_segments=(1, 4), reject_saturated=False, **kwargs)
  assert all(b["segments"] in (1, 4) for b in info["calibration"]["blocks"])
  assert info["calibration"]["calibration_deviation"] <= 1e-4
  assert rel_err(images, exact) <= 1e-4
  _, info = sampling.sample(model, noise, y, method="gs_jacobi", **kwargs)  # Defaults only.
  assert all(k <= model.num_tokens - 1 for k in info["iterations"])


def test_auto_calibration_is_json_and_reused_without_recalibrating(monkeypatch):
  model = tiny_model(in_channels=1, img_size=8, patch_size=2, num_blocks=2, layers_per_block=1,
                     scale=0.05)
  noise = _noise(model, n=4)
  images, info = sampling.sample(model, noise, method="auto", tol=1e-5,
                                 candidate_segments=(1, 3), repeats=2)
  stored = json.loads(json.dumps(info["calibration"]))  # As written to sampling.json.
  assert strategy.plans_from_json(stored["plans"]) == tuple(info["plans"])
  assert strategy.summary(stored).startswith("auto plan per block")

  def fail(*args, **kwargs):
    raise AssertionError("calibrated again")

  monkeypatch.setattr(strategy, "calibrate", fail)
  again, reused = sampling.sample(model, noise, method="auto", tol=0.5, calibration=stored)
  np.testing.assert_array_equal(again, images)  # Same plans and the calibrated tol, not 0.5.
  assert reused["segment_iterations"] == info["segment_iterations"]
  _, direct = sampling.sample(model, noise, method="gs_jacobi", plans=stored["plans"], tol=1e-5)
  assert direct["plans"] == info["plans"]


def test_auto_rejects_plans_whose_sweeps_reach_the_segment_length():
  model = tiny_model(in_channels=1, img_size=8, patch_size=2, num_blocks=1, layers_per_block=1,
                     scale=0.3)
  noise = _noise(model, n=4)
  # tol = 0: every parallel segment runs all its sweeps, so both candidates are saturated and
  # the sequential plan (one-token segments) is used instead.
  _, info = sampling.sample(model, noise, method="auto", tol=0.0, candidate_segments=(1, 3),
                            repeats=1)
  for block in info["calibration"]["blocks"]:
    assert block["segments"] == model.num_tokens - 1
    assert [r["segments"] for r in block["rejected_saturated"]] == [1, 3]
    for r in block["rejected_saturated"]:
      assert any(s >= n for s, n in zip(r["sweeps"], r["lengths"]))


def test_auto_timing_is_the_best_of_repeats(monkeypatch):
  clock = iter([0.0, 5.0, 10.0, 11.0, 20.0, 23.0])  # Runs of 5 s, 1 s, 3 s.
  monkeypatch.setattr(strategy.time, "perf_counter", lambda: next(clock))
  seconds, counts = strategy._best_time(lambda: (None, jnp.array([2, 3])), repeats=3)
  assert seconds == 1.0 and counts.tolist() == [2, 3]


def test_gs_jacobi_attends_only_to_the_solved_prefix_and_its_segment():
  """GS-Jacobi's KV cache grows segment by segment: a sweep's attention reads the positions up to
  its segment's end, not the whole sequence; the samples stay those of the sequential inverse."""
  model = tiny_model(in_channels=3, img_size=8, patch_size=2, num_blocks=1, layers_per_block=2,
                     num_classes=3, scale=0.3)
  noise = _noise(model, n=2)
  labels = jnp.array([0, 2])
  plans = (sampling.BlockPlan((1, 5, 9, 16)),)
  exact, _ = sampling.sample(model, noise, labels, guidance=1.5)
  images, _ = sampling.sample(model, noise, labels, guidance=1.5, method="gs_jacobi", plans=plans,
                              tol=0.0)
  assert rel_err(images, exact) <= EXACT
  fn = jax.jit(lambda z: jacobi.invert_block(model.blocks[0], z, labels, plans[0], tol=0.0,
                                             guidance_weights=jnp.full((15,), 1.5)))
  hlo = fn.lower(noise).compile().as_text()
  # Attention logits (guided batch 4; XLA drops the single head): (queries, keys) per segment;
  # the products with the 64-wide values are left out.
  logits = {shape for shape in re.findall(r"= f32\[4,(\d+),(\d+)\]\S* dot\(", hlo)
            if "64" not in shape}
  assert logits == {("4", "4"), ("4", "8"), ("7", "15")}, logits


@pytest.mark.parametrize("devices, mesh_shape", [(1, (1, 1)), (8, (8, 1)), (8, (2, 4)),
                                                 (8, (1, 8))])
def test_local_rows_counts_rows_not_shards(devices, mesh_shape):
  """What the sample job reports as 'process i computed R of the B rows': one process holds all
  rows of a batch, however its devices split (or replicate) them."""
  mesh = sharding.make_mesh(ConfigDict(dict(zip(("data", "fsdp"), mesh_shape))),
                            jax.devices()[:devices])
  rows = batches.global_batch(np.zeros((5, 3), np.float32), 16, sharding.batch_sharding(mesh))
  assert batches.local_rows(rows) == 16
  replicated = batches.global_batch(np.zeros((5, 3), np.float32), 16, sharding.replicated(mesh))
  assert batches.local_rows(replicated) == 16


def test_sample_dispatches_through_the_sampler_table(monkeypatch):
  """`sample` runs the table's entry for the method: a new sampler is one entry, and the config's
  method names are the table's."""
  from tarflow_flax import config_lib  # pylint: disable=g-import-not-at-top
  assert sampling.METHODS == tuple(sampling.SAMPLERS) == config_lib.SAMPLE_METHODS
  model = tiny_model()
  noise = _noise(model, n=2)
  calls = []

  def fake(model_, noise_tokens, y, **settings):
    calls.append(settings)
    return jnp.zeros((2, model_.img_size, model_.img_size, model_.in_channels)), {"fake": True}

  monkeypatch.setitem(sampling.SAMPLERS, "gs_jacobi", fake)
  images, info = sampling.sample(model, noise, method="gs_jacobi", guidance=0.5, tol=1e-3)
  assert info["fake"] and info["method"] == "gs_jacobi" and not np.any(images)
  assert calls[0]["tol"] == 1e-3 and calls[0]["guidance_kwargs"]["guidance"] == 0.5


def test_sampler_settings_come_from_the_config_unless_given():
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  from tarflow_flax import config_lib  # pylint: disable=g-import-not-at-top
  from tarflow_flax.sampling import settings  # pylint: disable=g-import-not-at-top
  config = tiny_config(**{"sample.method": "gs_jacobi", "sample.guidance": 1.5,
                          "data.noise_type": "gaussian", "data.noise_std": 0.1})
  assert settings.from_config(config) == dict(
      method="gs_jacobi", guidance=1.5, guide_what="ab", attn_temp=1.0, annealed_guidance=False,
      denoise_std=0.1, denoise_lr=1.0)
  given = settings.from_config(config, method="sequential", guidance=0.0, denoise=False,
                               attn_temp=0.5, denoise_lr=0.5)
  assert (given["method"], given["guidance"], given["denoise_std"], given["attn_temp"],
          given["denoise_lr"]) == ("sequential", 0.0, None, 0.5, 0.5)
  config.data.noise_type = "uniform"  # Nothing to denoise with.
  assert settings.from_config(config)["denoise_std"] is None
  with pytest.raises(ValueError, match="denoise_lr=-1"):
    settings.from_config(config, denoise_lr=-1)
  config.sample.method = "fast"
  with pytest.raises(config_lib.ConfigError, match="sample.method='fast': must be one of"):
    config_lib.validate(config)
