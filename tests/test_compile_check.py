"""Ahead-of-time TPU compilation of the trainer's step on this CPU host (libtpu, no TPU)."""

import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from conftest import REPO, tiny_config
from tarflow_flax import compile_check, flops, sharding

REPORT_KEYS = ("topology", "device_kind", "devices", "mesh", "batch", "fits", "hbm_per_chip_gib",
               "peak_memory_per_chip_gib", "compile_s", "model_tflops_per_step",
               "cost_model_step_s", "cost_model_mfu", "collectives")


@pytest.mark.parametrize("topology,kind,devices", [("v5e:2x2", "TPU v5 lite", 4),
                                                   ("v5p:2x2x2", "TPU v5", 8)])
def test_tiny_train_step_compiles_for_a_tpu_slice(topology, kind, devices):
  config = tiny_config(**{"mesh.fsdp": 2, "model.scan_layers": False, "model.num_classes": 10})
  result = compile_check.check_train(config, topology)
  assert all(key in result for key in REPORT_KEYS)
  assert result["device_kind"] == kind and result["devices"] == devices
  assert result["mesh"] == {"data": devices // 2, "fsdp": 2}
  assert result["fits"] and 0 < result["peak_memory_per_chip_gib"] < result["hbm_per_chip_gib"]
  model_tflops = config.batch_size * flops.train_flops_per_image(config) / 1e12
  assert result["model_tflops_per_step"] == pytest.approx(model_tflops)
  # Unrolled layers: the TPU cost model gives a step time, hence an MFU. (It gave none while the
  # class-embedding lookup of a batch-sharded label vector went through all-to-alls.)
  assert result["cost_model_step_s"] > 0 and 0 < result["cost_model_mfu"] < 1
  assert result["collectives"]["all-to-all"]["count"] == 0
  assert result["attention"] == "xla" and result["pallas_kernels"] == 0  # 16 tokens: no splash.
  # FSDP over 2 chips: parameters are gathered, gradients reduced.
  assert result["collectives"]["all-gather"]["count"] > 0
  json.dumps(result)  # The JSON line must serialise.


def _ids(mesh_devices):
  return np.vectorize(lambda d: d.id)(mesh_devices)


def test_mesh_splits_a_torus_axis_where_it_must_and_matches_make_mesh_elsewhere():
  # fsdp=4 on v6e-64 (an 8x8 torus) needs an 8-chip axis split in two; jax.make_mesh refuses.
  v6e = compile_check.topology_devices("v6e:8x8")
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 4}), v6e)
  assert dict(mesh.shape) == {"data": 16, "fsdp": 4}
  assert sorted(_ids(mesh.devices).ravel()) == sorted(d.id for d in v6e)
  with pytest.raises(NotImplementedError):
    jax.make_mesh((16, 4), sharding.DATA_AXES, devices=v6e)
  for topology in ("v5p:2x2x2", "v5e:4x8"):  # Where make_mesh can, the same device order.
    devices = compile_check.topology_devices(topology)
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 4}), devices)
    expected = jax.make_mesh(mesh.devices.shape, sharding.DATA_AXES, devices=devices)
    np.testing.assert_array_equal(_ids(mesh.devices), _ids(expected.devices))


def test_auto_attention_compiles_the_splash_kernel_for_tpu():
  # 16×16 px, patch 1: 256 tokens, which splash tiles by 128.
  config = tiny_config(**{"model.patch_size": 1, "model.num_blocks": 1})
  result = compile_check.check_train(config, "v5e:2x2")
  assert result["attention"] == "splash"
  # The Pallas kernel runs in the forward and the backward pass (not an XLA fallback).
  assert result["pallas_kernels"] >= 2
  assert result["cost_model_tflops_per_chip"] > 0


def test_bf16_fsdp_gathers_in_compute_dtype_and_accumulation_moves_no_images():
  config = tiny_config(**{"mesh.fsdp": 4, "model.dtype": "bfloat16", "model.channels": 128,
                          "batch_size": 16, "grad_accum_steps": 2})
  lowered, _, _ = compile_check.lower_train_step(
      config, compile_check.topology_devices("v5p:2x2x2"), config.batch_size)
  hlo = lowered.compile().as_text()
  gathered = compile_check.collective_sizes(hlo, "all-gather")
  # Kernels (C×3C, C×4C, ...) are gathered as bf16; only small float32 tensors (embeddings,
  # norms) may be gathered in float32.
  assert max(gathered["bf16"]) >= 128 * 3 * 128
  assert max(gathered.get("f32", [0])) < 128 * 128
  assert compile_check.collectives(hlo)["collective-permute"]["count"] == 0


def test_sampler_steps_compile_for_a_tpu_slice():
  config = tiny_config(**{"image_size": 32})  # 64 tokens: GS-Jacobi sweeps of 7 tokens.
  token, sweep = compile_check.check_sample(config, "v5e:2x2", batch=8)
  assert (token["what"], token["tokens"]) == ("sequential_token_step", 1)
  assert (sweep["what"], sweep["tokens"]) == ("gs_jacobi_sweep", 7)
  assert token["fits"] and sweep["fits"] and token["mesh"] == {"data": 4, "fsdp": 1}
  assert sweep["model_tflops_per_step"] == pytest.approx(7 * token["model_tflops_per_step"])
  # The KV-cached steps unroll their layers: the cost model times the whole step.
  assert 0 < token["cost_model_step_s"] < sweep["cost_model_step_s"]
  assert 0 < sweep["cost_model_mfu"] < 1


def test_a_step_that_cannot_fit_exits_1_with_one_line():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  proc = subprocess.run(
      [sys.executable, "-m", "tarflow_flax.compile_check", "--config=configs/tiny.py",
       "--topology=v5e:2x2", "--batch=4194304"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith("error: does not fit on v5e:2x2: "), proc.stderr[-2000:]
  assert proc.stdout == ""


def test_collectives_are_parsed_with_their_bytes():
  hlo = """
  %all-gather.1 = bf16[64,256]{1,0} all-gather(bf16[16,256]{1,0} %p), dimensions={0}
  %ags = (f32[8]{0}, f32[32]{0}) all-gather-start(f32[8]{0} %q), dimensions={0}
  %agd = f32[32]{0} all-gather-done((f32[8]{0}, f32[32]{0}) %ags)
  %ar = f32[10]{0} all-reduce(f32[10]{0} %r), to_apply=%add
  """
  result = compile_check.collectives(hlo)
  assert result["all-gather"] == {"count": 2, "bytes": 64 * 256 * 2 + 32 * 4}
  assert result["all-reduce"] == {"count": 1, "bytes": 40}
  assert result["collective-permute"] == {"count": 0, "bytes": 0}


def test_hlo_ops_reads_every_instruction_tuple_shapes_with_index_comments_included():
  hlo = """
  ENTRY %main (p: f32[4]) -> f32[4] {
    %p = f32[4]{0} parameter(0)
    %t = (s32[], f32[4]{0}, f32[4]{0}, f32[4]{0}, f32[4]{0}, /*index=5*/f32[4]{0}) tuple(%c, %p)
    %w = (s32[], f32[4]{0}, f32[4]{0}, f32[4]{0}, f32[4]{0}, /*index=5*/f32[4]{0}) while(%t)
    ROOT %r = f32[4]{0} get-tuple-element(%w), index=1
  }
  """
  assert compile_check.hlo_ops(hlo) == ["parameter", "tuple", "while", "get-tuple-element"]
