"""TarFlow's `config.model` rules: what each key may be, and what a config builds.

Read by the model itself (its constructor validates), by config validation (through the family
table in `models/__init__.py`), by the checkpoints (which keys may change on resume) and by the
FLOP model.
"""

from __future__ import annotations

from tarflow_flax.models import attention, transformer
from tarflow_flax.models.family import ModelConfigError

COMPUTE_DTYPES = ("float32", "bfloat16")
# The parameter tree is the same stacked tree whatever these are (scan or not, any kernel, remat,
# compute dtype): resume, fine-tuning and converted weights accept any of them changed.
RUNTIME_ONLY_KEYS = ("dtype", "remat", "remat_policy", "attention", "scan_layers")
# AdaLN parameters start as zero modulation: a checkpoint without them (an unconditional model)
# fine-tunes into a conditioned one.
NEUTRAL_WHEN_ABSENT = ("cond_embed", "cond_null", "adaln")


def _fail(key: str, rule: str, value) -> None:
  raise ModelConfigError(f"config.{key}={value!r}: {rule}")


def block_depths(model_config) -> tuple[int, ...]:
  """Per-block layer counts from `layers_per_block` (an int or a sequence)."""
  lpb = model_config.layers_per_block
  if isinstance(lpb, int):
    return (lpb,) * model_config.num_blocks
  return tuple(int(d) for d in lpb)


def validate(m, image_size: int) -> None:
  """Checks the model keys; raises ModelConfigError naming the first broken rule."""
  if m.in_channels < 1:
    _fail("model.in_channels", "must be >= 1", m.in_channels)
  if m.patch_size < 1 or image_size % m.patch_size:
    _fail("image_size", f"must be divisible by model.patch_size={m.patch_size}", image_size)
  head = transformer.HEAD_DIM
  if m.channels < head or m.channels % head:
    _fail("model.channels", f"must be a positive multiple of the head width {head}", m.channels)
  if m.num_blocks < 1:
    _fail("model.num_blocks", "must be >= 1", m.num_blocks)
  depths = block_depths(m)
  if len(depths) != m.num_blocks or min(depths) < 1:
    _fail("model.layers_per_block",
          f"must be an int >= 1 or {m.num_blocks} ints >= 1 (one per block)", m.layers_per_block)
  if m.num_classes < 0:
    _fail("model.num_classes", "must be >= 0", m.num_classes)
  if m.dtype not in COMPUTE_DTYPES:
    _fail("model.dtype", f"must be one of {COMPUTE_DTYPES}", m.dtype)
  if m.remat_policy not in transformer.REMAT_POLICIES:
    _fail("model.remat_policy", f"must be one of {tuple(transformer.REMAT_POLICIES)}",
          m.remat_policy)
  if m.attention not in attention.IMPLEMENTATIONS:
    _fail("model.attention", f"must be one of {attention.IMPLEMENTATIONS}", m.attention)
  if m.cond_dim < 0:
    _fail("model.cond_dim", "must be >= 0 (0: no continuous conditioning)", m.cond_dim)
  if m.soft_clip < 0:
    _fail("model.soft_clip", "must be >= 0 (0: off)", m.soft_clip)


def num_tokens(config) -> int:
  """Tokens per image of the config's model (`config.image_size`, `config.model.patch_size`)."""
  return (config.image_size // config.model.patch_size)**2


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
