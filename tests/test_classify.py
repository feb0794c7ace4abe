"""Bayes classifier of a conditional flow: argmin over classes of the per-image training loss,
every eval image once on any device count; the job and the training-time `eval/accuracy`."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import read_scalars, tiny_config, tiny_model
from tarflow_flax import checkpoint, eval_lib, evaluate, losses, models, sharding
from tarflow_flax import input_pipeline as data_lib


def _conditional_config(**overrides):
  return tiny_config(**{"model.num_classes": 10, "data.noise_std": 0.1, **overrides})


@pytest.fixture(scope="module")
def model_and_config():
  # The tiny config's architecture, far from the identity so that the label changes the loss.
  return (tiny_model(img_size=16, patch_size=4, num_classes=10, scale=0.5, seed=3),
          _conditional_config(**{"batch_size": 96}))


def test_class_losses_are_the_training_loss_per_image(model_and_config):
  model, _ = model_and_config
  x = jax.random.uniform(jax.random.key(0), (3, 16, 16, 1), minval=-1, maxval=1)
  got = eval_lib.class_losses(model, x, 10)
  assert got.shape == (3, 10)
  for i in range(3):
    for label in (0, 7):
      z, logdets, _ = model(x[i:i + 1], jnp.array([label]))
      np.testing.assert_allclose(got[i, label], losses.nll_loss(z, logdets), rtol=1e-5, atol=1e-6)
  assert float(jnp.std(got[0])) > 1e-3  # The label matters.


def _manual_accuracy(model, config, num_draws=1):
  """Independent re-computation on one device: same noise keys, one class and draw at a time."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def loss(x, label):
    z, logdets, _ = nnx.merge(graphdef, state)(x, jnp.full((len(x),), label))
    return 0.5 * jnp.mean(z.reshape(len(x), -1)**2, axis=1) - logdets

  correct, count = np.zeros(10), np.zeros(10)
  for index, batch in enumerate(data_lib.create_eval_iterator(config)):
    images = batch["image_uint8"]
    losses_ = np.zeros((len(images), 10))
    for draw in range(num_draws):
      key = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), draw), index)
      x = images.astype(np.float32) / 127.5 - 1.0 + 0.1 * jax.random.normal(key, images.shape)
      losses_ += np.stack([loss(x, c) for c in range(10)], axis=1) / num_draws
    prediction = np.argmin(losses_, axis=1)
    for p, y, m in zip(prediction, batch["label"], batch["mask"]):
      if m:
        correct[y] += p == y
        count[y] += 1
  return correct, count


def test_accuracy_counts_every_image_once_sharded(model_and_config):
  model, config = model_and_config  # batch 96: 6 batches, the last one 20 digits + padding.
  graphdef, state = nnx.split(model)
  mesh = sharding.make_mesh(config.mesh)  # All 8 test devices.
  placed = jax.device_put(state, sharding.state_shardings(state, mesh))
  result = eval_lib.evaluate_accuracy(graphdef, placed, config, mesh)
  correct, count = _manual_accuracy(model, config)
  assert result["num_images"] == 500 and count.sum() == 500
  assert result["accuracy"] == pytest.approx(correct.sum() / 500, abs=1e-9)
  np.testing.assert_allclose(result["per_class_accuracy"], correct / count, atol=1e-9)
  assert 0 < result["accuracy"] < 1


def test_accuracy_averages_the_class_losses_over_noise_draws(model_and_config):
  model, _ = model_and_config
  config = _conditional_config(**{"batch_size": 96, "classify_noise_draws": 3})
  graphdef, state = nnx.split(model)
  mesh = sharding.make_mesh(config.mesh)
  result = eval_lib.evaluate_accuracy(graphdef, state, config, mesh)
  correct, _ = _manual_accuracy(model, config, num_draws=3)
  one_draw, _ = _manual_accuracy(model, config, num_draws=1)
  assert result["noise_draws"] == 3
  assert result["accuracy"] == pytest.approx(correct.sum() / 500, abs=1e-9)
  np.testing.assert_allclose(result["per_class_accuracy"], correct / 50, atol=1e-9)
  assert not np.array_equal(correct, one_draw)  # The extra draws changed some predictions.


def test_classify_job_and_unconditional_refusal(tmp_path, capsys, caplog):
  config = _conditional_config(**{"batch_size": 8})
  checkpoint.save_model_checkpoint(str(tmp_path / "cond"), models.build_model(config), config)
  out = tmp_path / "acc.json"
  with caplog.at_level(logging.INFO):
    result = evaluate.classify(tmp_path / "cond", num_batches=2, num_noise_draws=2)
  evaluate.report("classify", result, str(out))
  data = json.loads(out.read_text())
  assert data["metric"] == "classify" and data["num_images"] == 16 and data["noise_draws"] == 2
  last_line = capsys.readouterr().out.strip().splitlines()[-1]
  assert f'"accuracy": {data["accuracy"]}' in last_line and last_line.startswith("done: classify")
  assert 0 <= data["accuracy"] <= 1 and len(data["per_class_accuracy"]) == 10
  assert "classify: batch 1, 8 images, " in caplog.text  # Progress, from the first batch on.
  uncond = tiny_config()
  checkpoint.save_model_checkpoint(str(tmp_path / "uncond"), models.build_model(uncond), uncond)
  with pytest.raises(ValueError, match="^the Bayes classifier needs"):
    evaluate.classify(tmp_path / "uncond")


def test_training_logs_accuracy_for_conditional_models(tmp_path):
  from tarflow_flax import train  # pylint: disable=g-import-not-at-top
  config = _conditional_config(**{"batch_size": 8, "num_train_steps": 2, "eval_every_steps": 2,
                                  "num_eval_batches": 2, "checkpoint_every_steps": 2})
  train.train_and_evaluate(config, str(tmp_path))
  values = read_scalars(tmp_path)["eval/accuracy"]
  assert list(values) == [2] and 0 <= values[2] <= 1
