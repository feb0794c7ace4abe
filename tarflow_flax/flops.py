"""Model FLOPs of TarFlow (matmul FLOPs, causal attention counted as half) and device peaks.

Per block with T tokens, width C, token size Cp and L layers (one multiply-add = 2 FLOPs):
  proj_in   2·T·Cp·C
  per layer qkv 6·T·C² + attention output 2·T·C² + MLP 16·T·C²           = 24·T·C²
            QKᵀ and PV 2·(2·T²·C) halved by the causal mask              =  2·T²·C
  proj_out  2·T·C·Cp·(2 if NVP else 1)
A training step costs 3× the forward (backward = 2× forward): the model FLOPs that MFU counts.
Remat recomputes the forward once more in the backward pass: hardware FLOPs (HFU), 4× the forward;
with remat_policy 'save_matmuls' only the attention matmuls (QKᵀ, PV) are recomputed.
"""

from __future__ import annotations

from tarflow_flax.models import tarflow_config

# Dense bfloat16 peak TFLOP/s per chip / GPU, by `jax.devices()[0].device_kind` prefix.
PEAK_TFLOPS = {
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v5": 459.0,
    "TPU v6 lite": 918.0,
    "TPU v6e": 918.0,
    "NVIDIA H100": 989.0,
    "NVIDIA H200": 989.0,
    "NVIDIA A100": 312.0,
}


def _dims(config) -> tuple[int, int, int, int]:
  """(tokens T, token size Cp, width C, proj_out size) of the config's model."""
  m = config.model
  token_dim = m.in_channels * m.patch_size**2
  return (tarflow_config.num_tokens(config), token_dim, m.channels,
          token_dim * (2 if m.nvp else 1))


def forward_flops_per_image(config) -> float:
  """Forward-pass FLOPs for one image of the config's model."""
  m = config.model
  tokens, token_dim, c, out_dim = _dims(config)
  total = 0.0
  for depth in tarflow_config.block_depths(m):
    total += 2 * tokens * token_dim * c + 2 * tokens * c * out_dim
    total += depth * 24 * tokens * c * c
  return total + attention_flops_per_image(config)


def attention_flops_per_image(config) -> float:
  """The forward's QKᵀ and PV FLOPs for one image (causal: half of the full T×T products)."""
  tokens, _, c, _ = _dims(config)
  return sum(tarflow_config.block_depths(config.model)) * 2 * tokens * tokens * c


def train_flops_per_image(config) -> float:
  """Model FLOPs of one training step per image: forward + backward = 3× forward (MFU)."""
  return 3.0 * forward_flops_per_image(config)


def hardware_train_flops_per_image(config) -> float:
  """FLOPs the hardware executes per image: 3× forward + what remat recomputes (HFU)."""
  m = config.model
  recomputed = 0.0
  if m.remat:
    recomputed = (attention_flops_per_image(config) if m.remat_policy == "save_matmuls"
                  else forward_flops_per_image(config))
  return 3.0 * forward_flops_per_image(config) + recomputed


def utilization(flops_per_image: float, images_per_sec: float, peak_tflops_per_device: float,
                num_devices: int) -> float:
  """Achieved FLOP/s over the devices' peak: MFU with model FLOPs, HFU with hardware FLOPs."""
  return flops_per_image * images_per_sec / (peak_tflops_per_device * 1e12 * num_devices)


def block_step_flops(config, num_layers: int, num_new: int) -> float:
  """Model FLOPs per image of one KV-cached block step feeding `num_new` tokens (sampling), with
  attention over the whole cache (the masked part included: the step computes it)."""
  tokens, token_dim, c, out_dim = _dims(config)
  per_layer = 24 * num_new * c * c + 4 * num_new * tokens * c
  return 2 * num_new * token_dim * c + 2 * num_new * c * out_dim + num_layers * per_layer


def peak_tflops(device_kind: str) -> float | None:
  """Peak bf16 TFLOP/s of one device of this kind, or None when unknown (e.g. CPU)."""
  for prefix, peak in sorted(PEAK_TFLOPS.items(), key=lambda kv: -len(kv[0])):
    if device_kind.startswith(prefix):
      return peak
  return None


def num_params(config) -> int:
  """Parameter count (without the `var` buffer) from the config alone."""
  m = config.model
  tokens, token_dim, c, out_dim = _dims(config)
  per_layer = 2 * 2 * c + (3 * c * c + 3 * c) + (c * c + c) + (4 * c * c + 4 * c) + (4 * c * c + c)
  if m.cond_dim:  # AdaLN: a C → 4C Linear per layer (scale and shift of both LayerNorms).
    per_layer += 4 * c * c + 4 * c
  total = 0
  for depth in tarflow_config.block_depths(m):
    total += token_dim * c + c + tokens * c + m.num_classes * c + c * out_dim + out_dim
    if m.cond_dim:  # The condition's embedding Linear and the learned null embedding.
      total += m.cond_dim * c + c + c
    total += depth * per_layer
  return total
