"""Ahead-of-time compilation for NVIDIA H100s on this CPU host (the CUDA plugin, no GPU, no driver).

Needs the test extra's CUDA plugin: without it every test here fails (never skips).
"""

import json
import os
import re
import subprocess
import sys

import jax
import pytest

from conftest import REPO, tiny_config
from test_compile_check import REPORT_KEYS
from tarflow_flax import compile_check, flops, gpu_targets

H100_USABLE_GIB = 84_929_347_584 * 0.75 / 2**30  # Device memory × JAX's preallocated share.


def test_tiny_bf16_train_step_compiles_for_an_h100_with_cudnn_attention():
  config = tiny_config(**{"model.dtype": "bfloat16"})
  result = compile_check.check_train(config, "h100:1x1x1")
  assert all(key in result for key in REPORT_KEYS + ("attention", "cudnn_attention_calls"))
  assert result["device_kind"] == "NVIDIA H100 80GB HBM3" and result["devices"] == 1
  assert result["hbm_per_chip_gib"] == pytest.approx(H100_USABLE_GIB)
  assert result["fits"] and 0 < result["peak_memory_per_chip_gib"] < result["hbm_per_chip_gib"]
  assert result["model_tflops_per_step"] == pytest.approx(
      config.batch_size * flops.train_flops_per_image(config) / 1e12)
  # No GPU cost model: no time, and the report says why.
  assert result["cost_model_step_s"] is None and "no cost model" in result["cost_model_note"]
  # The kernel runs forward and backward in every layer (2 blocks × 1 layer here).
  assert result["attention"] == "cudnn" and result["cudnn_attention_calls"] == 4
  assert result["pallas_kernels"] == 0
  json.dumps(result)


def test_cudnn_attention_is_reported_as_xla_where_cudnn_does_not_run():
  # On the CPU (and for float32 on GPUs) model.attention='cudnn' runs XLA's attention.
  result = compile_check.check_train(tiny_config(**{"model.attention": "cudnn"}), "local")
  assert result["attention"] == "xla" and result["cudnn_attention_calls"] == 0


def _result_ranks(hlo_text: str, op: str) -> list[int]:
  """Rank of each `op` result in compiled HLO text (an async start's output: its last shape)."""
  ranks = []
  for line in hlo_text.splitlines():
    match = re.search(r"=\s*(\(.*?\)|\S+)\s+%s(-start)?\(" % op, line)
    if match:
      ranks.append(len(re.findall(r"\w+\[([\d,]*)\]", match.group(1))[-1].split(",")))
  return ranks


def test_fsdp_over_two_h100_hosts_gathers_kernels_instead_of_reducing_activations():
  # Scanned layers and fsdp 4 (as imagenet64): XLA's GPU partitioner used to split the matmul
  # inputs' features like the kernels and all-reduce every matmul output (30.7 GB per imagenet64
  # step on 8 H100s), with all-to-alls into and out of that layout.
  config = tiny_config(**{"model.dtype": "bfloat16", "model.channels": 128, "mesh.fsdp": 4,
                          "model.layers_per_block": 2})
  devices = compile_check.topology_devices("h100:2x1x8")
  lowered, mesh, _ = compile_check.lower_train_step(config, devices, 16)
  assert dict(mesh.shape) == {"data": 4, "fsdp": 4}
  hlo = lowered.compile().as_text()
  assert gpu_targets.cudnn_attention_calls(hlo) == 4  # Forward and backward of 2 scanned blocks.
  counts = compile_check.collectives(hlo)
  assert counts["all-gather"]["count"] > 0 and counts["all-to-all"]["count"] == 0
  # Gradients are all-reduced as kernels (rank ≤ 2) or flat buffers, never as (N, T, C) activations.
  assert max(_result_ranks(hlo, "all-reduce")) <= 2


@pytest.mark.parametrize("topology,devices,image_size,patch_size,sweep_tokens,options", [
    ("h100:2x1x8", 16, 32, 4, 7, {}),  # 64 tokens: sweeps of 7.
    # 1024 tokens: sweeps of 127. Untuned Triton GEMMs find no tiling for (8·127, C) × (C, C)
    # without a GPU to autotune on: compiled with cuBLAS GEMMs instead, and the report says so.
    ("h100:1x1x1", 1, 64, 2, 127, {"xla_gpu_enable_triton_gemm": False})])
def test_sampler_steps_compile_for_h100s(topology, devices, image_size, patch_size, sweep_tokens,
                                         options):
  config = tiny_config(**{"image_size": image_size, "model.patch_size": patch_size,
                          "model.dtype": "bfloat16"})
  token, sweep = compile_check.check_sample(config, topology, batch=devices * 8)
  assert (token["what"], token["tokens"], sweep["what"], sweep["tokens"]) == (
      "sequential_token_step", 1, "gs_jacobi_sweep", sweep_tokens)
  assert token["devices"] == sweep["devices"] == devices
  assert token["fits"] and sweep["fits"] and token["mesh"] == {"data": devices, "fsdp": 1}
  assert sweep["model_tflops_per_step"] == pytest.approx(
      sweep_tokens * token["model_tflops_per_step"])
  assert token["compiler_options"] == {} and sweep["compiler_options"] == options
  # The KV-cached step attends with einsums over its cache, never cuDNN.
  assert token["attention"] == "xla" and sweep["cudnn_attention_calls"] == 0


def test_gpu_topology_names_are_checked():
  with pytest.raises(ValueError, match="slices × hosts × GPUs per host"):
    compile_check.topology_devices("h100:8")
  assert [d.process_index for d in compile_check.topology_devices("h100:1x2x2")] == [0, 0, 1, 1]


def test_gpu_compiles_refuse_a_started_non_cpu_backend():
  jax.devices()  # Backends started (CPU only here).
  try:
    jax.config.update("jax_platforms", None)
    with pytest.raises(ValueError, match="JAX_PLATFORMS=cpu"):
      gpu_targets.use_cpu_backend()
  finally:
    jax.config.update("jax_platforms", "cpu")


def test_an_absurd_batch_exits_1_with_one_error_line_without_jax_platforms_set():
  # compile_check selects the CPU backend itself: nothing in the environment says cpu.
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  proc = subprocess.run(
      [sys.executable, "-m", "tarflow_flax.compile_check", "--config=configs/tiny.py",
       "--topology=h100:1x1x1", "--batch=4194304"],
      cwd=REPO, env=dict(env, PYTHONPATH=os.pathsep.join(filter(None, [REPO, env.get(
          "PYTHONPATH")]))), capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: does not fit on h100:1x1x1: needs "), proc.stderr[-2000:]
  assert proc.stdout == ""
