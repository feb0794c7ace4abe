"""The model seam: config.model.name picks a family, and a second family trains, checkpoints and
resumes through the same trainer without touching it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import read_scalars, tiny_config
from tarflow_flax import checkpoint, config_lib, models, steps, train
from tarflow_flax.models import tarflow


class Scale(nnx.Variable):
  """A non-parameter running statistic, updated by the family's `update` (like a VP prior)."""


class ElementwiseFlow(nnx.Module):
  """z = (x − shift)·exp(−log_scale) per pixel: the smallest flow with an exact log-det."""

  def __init__(self, shape, rngs: nnx.Rngs):
    self.shift = nnx.Param(0.01 * jax.random.normal(rngs.params(), shape))
    self.log_scale = nnx.Param(jnp.zeros(shape))
    self.running_z2 = Scale(jnp.ones(()))

  def __call__(self, x, y=None, y_cont=None):
    z = (x - self.shift[...]) * jnp.exp(-self.log_scale[...])
    logdets = -jnp.mean(self.log_scale[...]) * jnp.ones(x.shape[:1])
    return z, logdets, {}


def _validate(m, image_size):
  if m.in_channels != 1:
    raise models.ModelConfigError(f"config.model.in_channels={m.in_channels!r}: the toy flow "
                                  "is grayscale only")


def _loss(model, images, labels, cond):
  z, logdets, _ = model(images)
  stats = {"z2": jnp.mean(jnp.square(jax.lax.stop_gradient(z)))}
  loss = 0.5 * jnp.mean(z**2) - jnp.mean(logdets)
  return loss, {"toy_scale": jnp.mean(model.log_scale[...]), "toy_pair": jnp.zeros(2)}, stats


def _update(model_config, rest, stats):
  return jax.tree.map(lambda v: 0.5 * v + 0.5 * stats["z2"], rest)


TOY = models.ModelFamily(
    validate=_validate,
    build=lambda config, rngs: ElementwiseFlow(
        (config.image_size, config.image_size, config.model.in_channels), rngs),
    runtime_only_keys=("dtype", "channels"),
    neutral_when_absent=(),
    loss=_loss,
    update=_update)


def test_the_default_family_is_tarflow_and_unknown_names_are_one_line():
  config = tiny_config()
  assert config.model.name == "tarflow"
  family = models.family(config)
  assert family.loss is tarflow.training_loss and family.update is tarflow.updated_prior
  assert isinstance(models.build_model(config), models.TarFlow)
  with pytest.raises(config_lib.ConfigError, match=r"model\.name='starflow': must be one of "
                     r"\('tarflow',\)"):
    config_lib.validate(tiny_config(**{"model.name": "starflow"}))
  # TarFlow's rules reach config validation through its family.
  with pytest.raises(config_lib.ConfigError, match="multiple of the head width 64"):
    config_lib.validate(tiny_config(**{"model.channels": 96}))


def test_a_second_family_trains_checkpoints_and_resumes(tmp_path, monkeypatch):
  monkeypatch.setitem(models.FAMILIES, "toy", TOY)
  config = tiny_config(**{"model.name": "toy", "num_train_steps": 4,
                          "checkpoint_every_steps": 2, "log_every_steps": 2})
  config_lib.validate(config)
  with pytest.raises(config_lib.ConfigError, match="grayscale only"):
    config_lib.validate(tiny_config(**{"model.name": "toy", "model.in_channels": 3}))

  trainer, abstract = steps.make_trainer(config)
  assert trainer.family is TOY
  assert {path for path, _ in nnx.to_flat_state(abstract)} == {("shift",), ("log_scale",),
                                                               ("running_z2",)}

  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(metrics["train/loss"])
  scalars = read_scalars(tmp_path)
  assert {"train/toy_scale", "train/toy_pair_0", "train/toy_pair_1"} <= set(scalars)
  assert "train/prior" not in scalars  # TarFlow's terms are TarFlow's.
  restored = checkpoint.load_model(str(tmp_path / "checkpoints"))
  assert isinstance(restored.model, ElementwiseFlow)
  # The family's update ran: the running statistic left its initial 1.0.
  assert float(restored.model.running_z2[...]) != 1.0
  # Resume with one of the family's runtime-only keys changed; another key is refused.
  checkpoint.check_same_model(tmp_path / "checkpoints", 4, tiny_config(
      **{"model.name": "toy", "model.channels": 128}))
  with pytest.raises(config_lib.ConfigError, match="differs in patch_size"):
    checkpoint.check_same_model(tmp_path / "checkpoints", 4, tiny_config(
        **{"model.name": "toy", "model.patch_size": 8}))
