"""TarFlow model and its construction from a config."""

from flax import nnx

from tarflow_flax.models.flow_block import FlowBlock
from tarflow_flax.models.tarflow import PriorVariance, TarFlow
from tarflow_flax.models.transformer import KVCache


def model_kwargs(config) -> dict:
  """TarFlow constructor keywords from a full config (`config.image_size`, `config.model.*`)."""
  m = config.model
  lpb = m.layers_per_block
  return dict(in_channels=m.in_channels, img_size=config.image_size, patch_size=m.patch_size,
              channels=m.channels, num_blocks=m.num_blocks,
              layers_per_block=lpb if isinstance(lpb, int) else tuple(lpb), nvp=m.nvp,
              num_classes=m.num_classes, dtype=m.dtype, remat=m.remat,
              remat_policy=m.remat_policy, attention=m.attention, scan_layers=m.scan_layers,
              cond_dim=m.cond_dim, soft_clip=m.soft_clip)


def build_model(config, rngs: nnx.Rngs | None = None) -> TarFlow:
  """Builds the config's TarFlow (reference initialisation, seeded by `config.seed`)."""
  return TarFlow(**model_kwargs(config), rngs=rngs or nnx.Rngs(config.seed))


__all__ = ["FlowBlock", "KVCache", "PriorVariance", "TarFlow", "build_model", "model_kwargs"]
