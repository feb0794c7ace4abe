"""config.init_from: a fresh run starting from converted or earlier weights."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import GOLDEN_DIR, read_scalars, tiny_config
from tarflow_flax import checkpoint, config_lib, convert, losses, models, sharding, steps, train
from tarflow_flax import input_pipeline as data_lib
from tarflow_flax.input_pipeline import device_transforms

GOLDEN_PTH = os.path.join(GOLDEN_DIR, "uncond_small.pth")


def _first_batch_loss(model, config) -> float:
  batch = next(data_lib.create_train_iterator(config, process_index=0, process_count=1))
  images = device_transforms.noised_images(  # As the train step makes them from the uint8 batch.
      jnp.asarray(batch["image"]), jnp.asarray(batch["index"]), seed=config.seed,
      noise_type=config.data.noise_type, noise_std=config.data.noise_std)
  z, logdets, _ = model(images)
  return float(losses.nll_loss(z, logdets))


def _fresh_state(config):
  mesh = sharding.make_mesh(config.mesh)
  trainer, abstract = steps.make_trainer(config)
  return trainer, mesh, steps.state_shardings(trainer, abstract, mesh)


def _train(config, workdir) -> dict[int, float]:
  train.train_and_evaluate(config, str(workdir))
  return read_scalars(workdir)["train/loss"]


def test_from_converted_reference_weights(tmp_path):
  """convert's output of the golden .pth trains on; step 1's loss is that model's loss."""
  if not os.path.exists(GOLDEN_PTH):
    pytest.fail(f"missing {GOLDEN_PTH}")  # A required input: fail, never skip.
  cfg = json.loads(str(np.load(GOLDEN_PTH.replace(".pth", ".npz"))["config"]))
  config = tiny_config(**{"image_size": cfg["img_size"], "model.in_channels": 3,
                          "model.patch_size": cfg["patch_size"], "model.channels": cfg["channels"],
                          "model.num_blocks": cfg["num_blocks"],
                          "model.layers_per_block": cfg["layers_per_block"],
                          "num_train_steps": 3, "log_every_steps": 1,
                          "checkpoint_every_steps": 3})
  ckpt = tmp_path / "converted"
  # What `python -m tarflow_flax.convert` does (its CLI is covered by test_convert.py).
  model = convert.model_from_pth(GOLDEN_PTH, config)
  checkpoint.save_model_checkpoint(str(ckpt), model, config, extra_meta={"source": GOLDEN_PTH})
  config.init_from = str(ckpt)
  loss = _train(config, tmp_path / "run")
  assert sorted(loss) == [1, 2, 3]
  np.testing.assert_allclose(loss[1], _first_batch_loss(model, config), rtol=1e-5)
  # Not what a seed-initialised model gives: the loaded weights were used.
  assert abs(loss[1] - _first_batch_loss(models.build_model(config), config)) > 1e-2


def test_from_another_runs_workdir_with_ema(tmp_path):
  base = {"num_train_steps": 2, "log_every_steps": 1, "checkpoint_every_steps": 2,
          "ema_decay": 0.9}
  first = tiny_config(**base)
  _train(first, tmp_path / "a")
  trained = checkpoint.load_model(str(tmp_path / "a" / "checkpoints"), use_ema=False).model
  ema, _, _, meta = checkpoint.load_model(str(tmp_path / "a" / "checkpoints"), use_ema=True)
  assert meta["weights"] == "ema"

  second = tiny_config(**{**base, "num_train_steps": 3, "seed": 7,
                          "init_from": str(tmp_path / "a")})
  loss = _train(second, tmp_path / "b")
  assert sorted(loss) == [1, 2, 3]
  np.testing.assert_allclose(loss[1], _first_batch_loss(trained, second), rtol=1e-5)

  # The fresh state holds both the model and the EMA weights of run a, at step 0.
  trainer, mesh, shardings = _fresh_state(second)
  state = train.init_train_state(trainer, mesh, shardings)
  assert int(state.step) == 0
  for got, want in ((state.model, nnx.state(trained)), (state.ema, nnx.state(ema))):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_shape_mismatch_names_the_parameter_and_adaln_may_be_absent(tmp_path):
  config = tiny_config()
  model = models.build_model(config)
  checkpoint.save_model_checkpoint(str(tmp_path / "ckpt"), model, config)

  wider = tiny_config(**{"model.channels": 128, "init_from": str(tmp_path / "ckpt")})
  with pytest.raises(config_lib.ConfigError,
                     match=r"init_from=.*parameter 'blocks\.0\.\S+' has shape \(.*64.*\) there, "
                           r"this config's model expects \(.*128.*\)"):
    train.init_train_state(*_fresh_state(wider))

  # An unconditional model into an AdaLN one: AdaLN parameters keep their neutral fresh init,
  # so the fine-tuned model starts as exactly the loaded one.
  cond = tiny_config(**{"model.cond_dim": 1, "data.cond_key": "ink",
                        "init_from": str(tmp_path / "ckpt")})
  trainer, mesh, shardings = _fresh_state(cond)
  state = train.init_train_state(trainer, mesh, shardings)
  loaded = nnx.merge(trainer.graphdef, state.model)
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 1), minval=-1, maxval=1)
  want, _, _ = model(x)
  got, _, _ = loaded(x, None, jnp.array([[1.5], [-2.0]]))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)

  with pytest.raises(config_lib.ConfigError, match="init_from=.*no such directory"):
    train.init_train_state(*_fresh_state(tiny_config(init_from=str(tmp_path / "nowhere"))))
