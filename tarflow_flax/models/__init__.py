"""The model families `config.model.name` picks from, and building a model from a config.

A new family: a module with its config rules, its nnx.Module and its training contract
(family.ModelFamily), and one row in FAMILIES.
"""

from flax import nnx

from tarflow_flax.models import tarflow, tarflow_config
from tarflow_flax.models.family import ModelConfigError, ModelFamily
from tarflow_flax.models.flow_block import FlowBlock
from tarflow_flax.models.tarflow import PriorVariance, TarFlow
from tarflow_flax.models.transformer import KVCache

FAMILIES: dict[str, ModelFamily] = {
    "tarflow": ModelFamily(
        validate=tarflow_config.validate,
        build=lambda config, rngs: TarFlow(**tarflow_config.model_kwargs(config), rngs=rngs),
        runtime_only_keys=tarflow_config.RUNTIME_ONLY_KEYS,
        neutral_when_absent=tarflow_config.NEUTRAL_WHEN_ABSENT,
        loss=tarflow.training_loss,
        update=tarflow.updated_prior),
}


def family(config) -> ModelFamily:
  """The family of `config.model.name` (a full config or its `model` part)."""
  name = (config.model if "model" in config else config).name
  if name not in FAMILIES:
    raise ModelConfigError(f"config.model.name={name!r}: must be one of {tuple(FAMILIES)}")
  return FAMILIES[name]


def build_model(config, rngs: nnx.Rngs | None = None):
  """The config's model (its family's initialisation, seeded by `config.seed`)."""
  return family(config).build(config, rngs or nnx.Rngs(config.seed))


__all__ = ["FAMILIES", "FlowBlock", "KVCache", "ModelConfigError", "ModelFamily", "PriorVariance",
           "TarFlow", "build_model", "family"]
