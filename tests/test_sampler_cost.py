"""The sampler-cost estimate: sampler programs compiled for a TPU (libtpu) and an H100 (the CUDA
plugin) on this CPU host, and the per-image arithmetic. Needs the test extra's libtpu and CUDA
plugin: without them these tests fail (never skip)."""

import json
import math

import jax
import pytest

from conftest import tiny_config
from tarflow_flax import compile_check, flops, gpu_targets, sampler_cost

H100_BANDWIDTH = 3_352_320_000_000  # gpu_specs/h100_sxm.txtpb's memory_bandwidth (bytes/s).


@pytest.mark.parametrize("topology,kind", [("v5p:1x1x1", "TPU v5"),
                                           ("h100:1x1x1", "NVIDIA H100 80GB HBM3")])
def test_report_gives_finite_times_and_the_ratios_of_its_own_times(topology, kind):
  config = tiny_config(**{"model.dtype": "bfloat16"})
  sweeps = {1: [3, 5], 8: [9, 12], 2: [7, 8]}  # Sweeps per block (2 blocks), as if measured.
  report = sampler_cost.estimate(config, topology, 8, sweeps)
  assert set(report["s_per_image"]) == {"sequential", 1, 8, "auto"}  # 2: not compiled.
  json.dumps(report)
  assert report["device_kind"] == kind and report["devices"] == 1 and not report["guided"]
  assert [p["segments"] for p in report["programs"]] == [0, *sampler_cost.SEGMENT_COUNTS]
  for program in report["programs"]:
    assert math.isfinite(program["seconds"]) and program["seconds"] > 0
    assert program["flops"] > 0 and program["bytes"] > 0
  token_s, sweep_s = report["token_step_s"], report["sweep_s"]
  assert token_s == report["programs"][0]["seconds"] and set(sweep_s) == {1, 4, 8, 16}
  per_image = report["s_per_image"]
  assert per_image["sequential"] == pytest.approx(2 * 15 * token_s / 8)  # 16 tokens, 2 blocks.
  assert per_image[8] == pytest.approx((9 + 12) * sweep_s[8] / 8)
  for method in (1, 8, "auto"):
    assert report["speedup_vs_sequential"][method] == pytest.approx(
        per_image["sequential"] / per_image[method])
  for segments, sweep in sweep_s.items():
    assert report["break_even_sweeps"][segments] == pytest.approx(15 * token_s / sweep)


def test_h100_time_is_the_roofline_of_xla_flops_and_bytes():
  config = tiny_config(**{"model.dtype": "bfloat16", "image_size": 32})
  devices = compile_check.topology_devices("h100:1x1x1")
  assert gpu_targets.memory_bandwidth(devices[0]) == H100_BANDWIDTH
  program = sampler_cost.programs(64, (8,))[1]
  assert (program["tokens"], program["cache_tokens"]) == (8, 35)
  cost = sampler_cost.program_cost(config, devices, 16, program, guided=False)
  peak = flops.peak_tflops(devices[0].device_kind) * 1e12
  assert cost["seconds"] == max(cost["flops"] / peak, cost["bytes"] / H100_BANDWIDTH)
  # XLA counts the matmuls the analytic model counts (at the full cache length), plus norms,
  # softmax and GELU, less the masked cache beyond 35 tokens.
  analytic = 16 * flops.block_step_flops(config, 1, program["tokens"])
  assert 0.7 * analytic < cost["flops"] < 1.3 * analytic
  # At least the keys and values of the cache are read (bf16, 64 channels, one layer).
  assert cost["bytes"] > 16 * 2 * 35 * 64 * 2


def test_h100_roofline_counts_what_cublas_calls_read_and_write():
  # GPU programs are compiled with cuBLAS GEMMs, which alone read the kernels: at width 1024
  # those outweigh everything else the step reads and writes.
  config = tiny_config(**{"model.dtype": "bfloat16", "image_size": 32, "model.channels": 1024})
  devices = compile_check.topology_devices("h100:1x1x1")
  program = sampler_cost.programs(64, (8,))[1]
  cost = sampler_cost.program_cost(config, devices, 16, program, guided=False)
  assert cost["compiler_options"] == compile_check.NO_TRITON_GEMM
  kernel_bytes = 12 * 1024 * 1024 * 2  # QKV, output, MLP up and down, bf16.
  assert kernel_bytes < cost["bytes"] < 2 * kernel_bytes


def test_the_guided_pass_costs_two_rows_per_image():
  devices = compile_check.topology_devices("v5p:1x1x1")
  program = sampler_cost.programs(16, ())[0]
  config = tiny_config(**{"model.dtype": "bfloat16", "model.num_classes": 10})
  plain, guided = (sampler_cost.program_cost(config, devices, 8, program, guided=g)
                   for g in (False, True))
  assert guided["flops"] == pytest.approx(2 * plain["flops"], rel=0.1)


def test_per_image_arithmetic_on_known_numbers():
  times = sampler_cost.per_image(num_tokens=101, num_blocks=2, batch=4, token_step_s=1e-4,
                                 sweep_s={1: 2e-3, 8: 5e-4}, sweeps={1: [30, 2], 8: [8, 40]})
  # Sequential: 100 steps per block: 0.01 s per block, 2 blocks over 4 images.
  assert times["sequential"] == pytest.approx(0.005)
  assert times["break_even_sweeps"] == pytest.approx({1: 5.0, 8: 20.0})
  assert times["parallel"] == pytest.approx({1: 32 * 2e-3 / 4, 8: 48 * 5e-4 / 4})
  # Block 0: sequential 0.01, Jacobi 0.06, GS 0.004 → GS; block 1: 0.01, 0.004, 0.02 → Jacobi.
  assert times["auto_plan"] == [8, 1]
  assert times["auto"] == pytest.approx((0.004 + 0.004) / 4)
  slow = sampler_cost.per_image(num_tokens=101, num_blocks=1, batch=1, token_step_s=1e-4,
                                sweep_s={8: 5e-4}, sweeps={8: [21]})
  assert slow["auto_plan"] == [0] and slow["auto"] == slow["sequential"]  # Past break-even.


def test_programs_use_the_samplers_mean_cache_lengths():
  # 65 tokens: 64 sequential steps in 2 chunks (stops 32, 64): mean cache 48. Four segments
  # [1, 17), [17, 33), [33, 49), [49, 65): 16 tokens each, caches 16, 32, 48, 64: mean 40.
  assert sampler_cost.programs(65, (1, 4)) == [
      {"segments": 0, "tokens": 1, "cache_tokens": 48},
      {"segments": 1, "tokens": 64, "cache_tokens": 64},
      {"segments": 4, "tokens": 16, "cache_tokens": 40}]


def test_custom_calls_count_operands_and_results_but_not_workspaces():
  hlo = """
  %p0 = bf16[8,64]{1,0} parameter(0)
  %p1 = bf16[64,32]{1,0} parameter(1)
  %fusion.1 = f32[8,32]{1,0} fusion(%p0), kind=kLoop, calls=%f
  %cublas.2 = (bf16[8,32]{1,0}, s8[4194304]{0}) custom-call(%p0, %p1), custom_call_target="__cublas$lt$matmul"
  ROOT %t = (bf16[8,32]{1,0}) tuple(%cublas.2)
  """
  assert sampler_cost.custom_call_bytes(hlo) == (2 * (8 * 64 + 64 * 32 + 8 * 32), 1)
  fused = "%f (x: f32[8]) -> f32[8] {\n  %x = f32[8]{0} parameter(0)\n  %y = f32[8]{0} negate(%x)\n}\n"
  assert sampler_cost.kernels(fused + "\nENTRY %main {" + hlo) == 2  # Fusion and cuBLAS call.


def test_measured_sweeps_carry_over_as_counts_or_in_proportion(tmp_path):
  measured = {"tokens": 17, "rows": [  # As benchmarks/sampling.py writes them.
      {"method": "sequential", "segments": None, "iterations_per_block": [16, 16]},
      {"method": "jacobi", "segments": 1, "iterations_per_block": [12, 3]},
      {"method": "gs_jacobi", "segments": 8, "iterations_per_block": [16, 9]}]}
  path = tmp_path / "sweeps.json"
  path.write_text(json.dumps(measured))
  assert sampler_cost.load_sweeps(str(path), 4, 65, "absolute") == {
      1: [12, 12, 3, 3], 8: [16, 16, 9, 9]}
  # 64 tokens to solve instead of 16: 4× the sweeps.
  assert sampler_cost.load_sweeps(str(path), 2, 65, "proportional") == {1: [48, 12], 8: [64, 36]}
  # Every segment needs the block's Jacobi sweeps (12, 3), at most its length: 1 segment of 64
  # tokens; 4 of 16; 8 of 8; 16 of 4 (uniform plans of 65 tokens).
  assert sampler_cost.load_sweeps(str(path), 2, 65) == {
      1: [12, 3], 4: [48, 12], 8: [64, 24], 16: [64, 48]}


def test_sweeps_spread_over_a_deeper_model():
  assert sampler_cost.spread_blocks([5, 1], 4) == [5, 5, 1, 1]
  with pytest.raises(ValueError, match="do not spread"):
    sampler_cost.spread_blocks([5, 1, 2], 4)


def test_a_step_that_cannot_fit_is_refused():
  devices = compile_check.topology_devices("h100:1x1x1")
  jacobi_sweep = sampler_cost.programs(16, (1,))[1]
  with pytest.raises(compile_check.DoesNotFit, match="15-token step needs .* GiB per chip"):
    sampler_cost.program_cost(tiny_config(), devices, 2**22, jacobi_sweep, guided=False)


def test_sampler_programs_are_lowered_as_the_loops_see_them():
  config = tiny_config(**{"model.dtype": "bfloat16"})
  devices = compile_check.topology_devices("v5p:1x1x1")
  lowered, _, _ = compile_check.lower_sampler_steps(config, devices, 8, 1, guided=True,
                                                    cache_tokens=5, hoisted_casts=True)
  # The guided pass: 2 rows per image in a cache of 5 tokens (1 head of 64 channels, 1 layer).
  assert {info.shape for info in jax.tree.leaves(lowered.args_info[0][2])} == {(16, 1, 5, 64)}
  state = jax.tree_util.tree_leaves_with_path(lowered.args_info[0][0])
  dtypes = {jax.tree_util.keystr(path): str(info.dtype) for path, info in state}
  kernels = {path: dtype for path, dtype in dtypes.items() if "kernel" in path}
  assert len(kernels) == 6 and set(kernels.values()) == {"bfloat16"}  # qkv, proj, up, down, in, out.
  assert {dtype for path, dtype in dtypes.items() if "norm" in path} == {"float32"}
