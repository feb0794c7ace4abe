"""NVIDIA GPUs as compile targets on a host without one (the CUDA PJRT plugin's abstract devices).

`h100:2x1x8` names 2 slices × 1 host × 8 GPUs of the target config shipped in gpu_specs/. Needs the
`gpu` extra (`pip install -e ".[gpu]"`: the CUDA plugin and cuDNN at the pinned JAX) and the CPU
backend: with a CUDA backend requested the plugin calls cuInit, which fails without a driver.
"""

from __future__ import annotations

import os
import re

import jax

from tarflow_flax import platforms

# Target config (gpu_specs/<file>) of each GPU compile_check knows: its device facts.
TARGET_CONFIGS = {"h100": "h100_sxm.txtpb"}
# JAX's GPU client preallocates this share of device memory and allocates only from it
# (XLA_PYTHON_CLIENT_MEM_FRACTION; the default is JAX's documented 0.75).
MEMORY_FRACTION_ENV = "XLA_PYTHON_CLIENT_MEM_FRACTION"
DEFAULT_MEMORY_FRACTION = 0.75
CUDNN_ATTENTION_TARGET = "__cudnn$fmha"  # Prefix of the cuDNN flash-attention custom calls.
_SHAPE = re.compile(r"^\d+x\d+x\d+$")


def is_gpu_topology(name: str) -> bool:
  return name.split(":", 1)[0] in TARGET_CONFIGS


def target_config(gpu: str) -> str:
  path = os.path.join(os.path.dirname(__file__), "gpu_specs", TARGET_CONFIGS[gpu])
  with open(path, encoding="utf-8") as f:
    return f.read()


def use_cpu_backend():
  """Selects the CPU backend (before JAX starts its backends), or fails when another is in use."""
  if jax.config.jax_platforms == "cpu":
    return
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  if xla_bridge.backends_are_initialized():
    raise ValueError("GPU topologies compile on the CPU backend: run with JAX_PLATFORMS=cpu")
  jax.config.update("jax_platforms", "cpu")


def devices(name: str) -> list:
  """The abstract devices of a GPU topology such as `h100:1x1x8` (compiled for, never run on)."""
  gpu, _, shape = name.partition(":")
  if not _SHAPE.match(shape):
    raise ValueError(f"--topology={name}: a GPU topology is {gpu}:SxHxG (slices × hosts × GPUs "
                     "per host), e.g. h100:1x1x8")
  use_cpu_backend()
  platforms.load_cuda_plugin()
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    return list(topologies.get_topology_desc(platform="cuda", target_config=target_config(gpu),
                                              topology=shape).devices)
  except NotImplementedError as e:  # No CUDA plugin registered a topology factory.
    raise ValueError(f"--topology={name}: the CUDA plugin is not installed (install the gpu "
                     "extra)") from e


def _device_fact(device, field: str) -> int | None:
  """A number from the target config describing `device` (e.g. device_memory_size), or None
  when no shipped target config describes it."""
  for gpu in TARGET_CONFIGS:
    text = target_config(gpu)
    if f'device_description_str: "{device.device_kind}"' in text:
      return int(re.search(rf"\b{field}:\s*(\d+)", text).group(1))
  return None


def memory_bandwidth(device) -> float | None:
  """HBM bytes per second of `device` (its target config's memory_bandwidth), or None if unknown."""
  bandwidth = _device_fact(device, "memory_bandwidth")
  return None if bandwidth is None else float(bandwidth)


def usable_memory_gib(device) -> float | None:
  """Device memory JAX may allocate on `device` (its preallocated share), or None if unknown."""
  total = _device_fact(device, "device_memory_size")
  if total is None:
    return None
  return total * float(os.environ.get(MEMORY_FRACTION_ENV, DEFAULT_MEMORY_FRACTION)) / 2**30


def cudnn_attention_calls(hlo_text: str) -> int:
  """Number of cuDNN flash-attention custom calls (forward and backward) in compiled HLO text."""
  return len(re.findall(r'custom_call_target="%s' % re.escape(CUDNN_ATTENTION_TARGET), hlo_text))
