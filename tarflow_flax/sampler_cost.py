"""What the samplers cost on a TPU or an H100, from compiled programs, without the hardware.

  python -m tarflow_flax.sampler_cost --config=configs/imagenet64.py --config.mesh.fsdp=1 \
      --topology=v5p:1x1x1 --batch=8 [--sweeps=sweeps.json]

For one block of the config's model (the deepest) and a sampling batch, compiles for the target
(compile_check's topologies: `v5p:1x1x1`, `v5e:2x2`, `h100:1x1x1`, ...) the programs the samplers'
loops run, as their loop bodies see them: the kernels already in the compute dtype (XLA casts them
once, before the loop), the guided batch (2 rows per image) when config.sample.guidance is set,
and the KV cache at the mean length it has over the loop (the samplers grow it as they go):
  - the sequential sampler's per-token step,
  - one sweep of a segment of a uniform S-segment plan (S = 1: Jacobi; 8: GS-Jacobi's default;
    4 and 16: auto's other candidates).
Each is timed by
  TPU  the compiled program's cost model (cost_analysis()['optimal_seconds']). A loop body is
       counted once there (compile_check's train step needs unrolled layers for it); these
       programs have no loops (`transformer.step_layers` unrolls the layers), which is checked.
  GPU  a roofline, max(FLOPs / peak, bytes / HBM bandwidth): XLA has no GPU cost model
       (cost_analysis() is None). FLOPs: XLA's HloCostAnalysis of the lowered HLO (fusion does not
       change them; the compiled HLO hides its GEMMs in cuBLAS calls the analysis cannot see
       into). Bytes: the same analysis of the compiled HLO, i.e. what its fused kernels read and
       write, plus the operands and results of its cuBLAS calls. Launch overheads are not in it.
       GEMMs are compiled as cuBLAS calls: without a GPU XLA cannot autotune its Triton GEMMs, and
       their untuned tilings (split-K partial sums in float32) moved 2.2–3.4× the bytes.

Per image (B images per call, K blocks, T tokens; sweeps per block measured on a trained model):
  sequential   K · (T − 1) · token step / B
  S segments   Σ_blocks sweeps · sweep(S) / B
  auto         Σ_blocks min(sequential, each measured S) / B: the plan auto's calibration would
               pick if its timings were these
  break-even   (T − 1) · token step / sweep(S): the sweeps per block below which S segments win.
--sweeps: benchmarks/sampling.py's JSON; a model with k blocks lends each block's counts to K/k
consecutive blocks (sampling order). Prints a table and one JSON line.
"""

from __future__ import annotations

import json
import re
from typing import Sequence

import jax
import numpy as np
from absl import flags, logging
from jax._src.lib import _jax  # The HloCostAnalysis binding that Lowered.cost_analysis uses.

from tarflow_flax import compile_check, config_lib, flops, gpu_targets, job_flags, paths, runtime
from tarflow_flax.models import tarflow_config
from tarflow_flax.sampling import api as sampling_api
from tarflow_flax.sampling import jacobi, sequential, strategy

# Segments per block whose sweeps are costed: Jacobi, GS-Jacobi's default and auto's candidates.
SEGMENT_COUNTS = tuple(sorted({1, sampling_api.DEFAULT_GS_SEGMENTS} |
                              {s for s in strategy.DEFAULT_CANDIDATES if s > 0}))
_CUSTOM_CALL = re.compile(r"^\s*(?:ROOT )?%\S+ = (\(.*?\)|\S+) custom-call\(([^)]*)\)")


def programs(num_tokens: int, segment_counts: Sequence[int] = SEGMENT_COUNTS) -> list[dict]:
  """The programs to cost: {'segments' (0: the sequential step), 'tokens' fed, 'cache_tokens'}."""
  steps = num_tokens - 1
  # Chunk [start, stop) of the sequential sampler's steps reads a cache grown to `stop` tokens.
  seq_cache = sum((stop - start) * stop for start, stop in sequential.sampling_chunks(steps))
  out = [{"segments": 0, "tokens": 1, "cache_tokens": round(seq_cache / steps)}]
  for count in segment_counts:
    # A segment [s0, s1) feeds s1 − s0 tokens into a cache grown to s1 − 1 (jacobi.invert_block).
    bounds = np.asarray(jacobi.BlockPlan.uniform(num_tokens, count).boundaries)
    out.append({"segments": count, "tokens": int(np.diff(bounds).max()),
                "cache_tokens": round(float(np.mean(bounds[1:] - 1)))})
  return out


def _hlo_cost(module) -> dict:
  """XLA's HloCostAnalysis of an HloModule (flops, bytes accessed), run by the CPU client."""
  return _jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)


def custom_call_bytes(hlo_text: str) -> tuple[int, int]:
  """(bytes read and written by the custom calls, their number) in compiled HLO text: operands
  and results, less the byte-typed workspaces (cuBLAS' s8 scratch)."""
  shapes = {m.group(1): m.group(2) for m in compile_check.HLO_INSTRUCTION.finditer(hlo_text)}
  total = count = 0
  for line in hlo_text.splitlines():
    match = _CUSTOM_CALL.match(line)
    if not match:
      continue
    count += 1
    operands = [shapes.get(name.strip().lstrip("%"), "") for name in match.group(2).split(",")]
    for shape in [match.group(1)] + operands:
      total += sum(compile_check.array_bytes(dt, n) for dt, n in compile_check.hlo_arrays(shape)
                   if dt not in ("s8", "u8"))
  return total, count


def kernels(hlo_text: str) -> int:
  """Instructions of the compiled entry computation that launch work (fusions, library calls,
  copies): what a GPU pays a launch for each time the program runs (no CUDA graphs)."""
  entry = hlo_text[hlo_text.index("\nENTRY"):]
  return sum(op not in ("parameter", "bitcast", "get-tuple-element", "tuple", "constant")
             for op in compile_check.hlo_ops(entry))


def roofline(lowered, compiled, device) -> dict:
  """{'seconds', 'flops', 'bytes', ...} of a compiled GPU program on `device` (module docstring)."""
  hlo_flops = _hlo_cost(lowered.compiler_ir("hlo").as_hlo_module())["flops"]
  compiled_cost = _hlo_cost(compiled.runtime_executable().hlo_modules()[0])
  extra, calls = custom_call_bytes(compiled.as_text())
  hlo_bytes = compiled_cost["bytes accessed"] + calls + extra  # The analysis adds −1 per call.
  peak = flops.peak_tflops(device.device_kind) * 1e12
  bandwidth = gpu_targets.memory_bandwidth(device)
  return {"seconds": max(hlo_flops / peak, hlo_bytes / bandwidth), "flops": hlo_flops,
          "bytes": hlo_bytes, "compute_s": hlo_flops / peak, "memory_s": hlo_bytes / bandwidth,
          "kernels": kernels(compiled.as_text()), "timed_by": "roofline"}


def tpu_cost_model(compiled) -> dict:
  """{'seconds', 'flops', 'bytes', ...} of a compiled TPU program by libtpu's cost model."""
  if re.search(r"\swhile\(", compiled.as_text()):
    raise ValueError("the sampler step holds a loop: the TPU cost model would count its body once")
  cost = compile_check.cost_analysis(compiled)
  if not cost.get("optimal_seconds", -1) > 0:
    raise ValueError(f"the TPU cost model gave no time ({cost.get('optimal_seconds')})")
  return {"seconds": cost["optimal_seconds"], "flops": cost["flops"],
          "bytes": cost["bytes accessed"], "timed_by": "tpu cost model"}


def program_cost(config, devices, batch: int, program: dict, guided: bool) -> dict:
  """`program` (from `programs`) compiled for `devices` and timed."""
  lowered, _, _ = compile_check.lower_sampler_steps(
      config, devices, batch, program["tokens"], guided=guided,
      cache_tokens=program["cache_tokens"], hoisted_casts=True)
  gpu = devices[0].platform == "gpu"
  compiled, compile_s, options = compile_check.compile_lowered(
      lowered, compile_check.NO_TRITON_GEMM if gpu else None)
  peak_gib, hbm = compile_check.peak_memory_gib(compiled), compile_check.hbm_gib(devices[0])
  if hbm is not None and peak_gib > hbm:
    raise compile_check.DoesNotFit(f"a {program['tokens']}-token step needs {peak_gib:.1f} GiB "
                                   f"per chip, the chips have {hbm:.0f} GiB")
  if devices[0].platform == "tpu":
    cost = tpu_cost_model(compiled)
  elif gpu:
    cost = roofline(lowered, compiled, devices[0])
  else:
    raise ValueError(f"no cost model for {devices[0].platform}: give a TPU or GPU topology")
  return {**program, **cost, "peak_memory_gib": peak_gib, "compile_s": compile_s,
          "compiler_options": options}


def spread_blocks(counts: Sequence[int], num_blocks: int) -> list[int]:
  """Sweeps per block measured on a k-block model, each lent to num_blocks / k blocks."""
  if num_blocks % len(counts):
    raise ValueError(f"sweeps for {len(counts)} blocks do not spread over {num_blocks} blocks")
  return [int(c) for c in counts for _ in range(num_blocks // len(counts))]


def per_image(*, num_tokens: int, num_blocks: int, batch: int, token_step_s: float,
              sweep_s: dict[int, float], sweeps: dict[int, Sequence[int]]) -> dict:
  """Seconds per image of each sampler, break-even sweeps and auto's plan (module docstring).

  sweep_s: {segments: seconds of one sweep}; sweeps: {segments: sweeps per block (sampling order,
  num_blocks entries)}, for the segment counts measured.
  """
  sequential_block = (num_tokens - 1) * token_step_s
  result = {"sequential": num_blocks * sequential_block / batch,
            "break_even_sweeps": {s: sequential_block / t for s, t in sweep_s.items()}}
  blocks = {s: [n * sweep_s[s] for n in counts] for s, counts in sweeps.items()}
  result["parallel"] = {s: sum(times) / batch for s, times in blocks.items()}
  auto_plan, auto_s = [], 0.0
  for b in range(num_blocks):
    options = [(sequential_block, 0)] + [(times[b], s) for s, times in blocks.items()]
    seconds, segments = min(options)
    auto_plan.append(segments)
    auto_s += seconds
  result.update(auto=auto_s / batch, auto_plan=auto_plan)
  return result


TRANSFERS = ("per_segment", "absolute", "proportional")


def load_sweeps(path: str, num_blocks: int, num_tokens: int, transfer: str = "per_segment"
                ) -> dict[int, list[int]]:
  """{segments: sweeps per block} from benchmarks/sampling.py's JSON, spread over `num_blocks`
  and carried over to `num_tokens` tokens:
    per_segment   each segment of each block needs the sweeps that block's Jacobi pass (one
                  segment of all its tokens) needed, or its length if fewer; for every S costed
    absolute      the jacobi / gs_jacobi rows' counts as measured (a segment count whose
                  segments were shorter than their sweeps says only that they saturated)
    proportional  those counts scaled with the segment length, (T − 1) / (T_measured − 1).
  """
  if transfer not in TRANSFERS:
    raise ValueError(f"transfer must be one of {TRANSFERS}, got {transfer!r}")
  measured = json.loads(paths.path(path).read_text())
  rows = {int(r["segments"]): spread_blocks(r["iterations_per_block"], num_blocks)
          for r in measured["rows"] if r.get("segments")}
  if transfer == "per_segment":
    if 1 not in rows:
      raise ValueError(f"{path} has no jacobi row: per_segment needs its sweeps per block")
    lengths = {s: np.diff(jacobi.BlockPlan.uniform(num_tokens, s).boundaries)
               for s in SEGMENT_COUNTS}
    return {s: [int(np.minimum(n, seg).sum()) for n in rows[1]] for s, seg in lengths.items()}
  scale = (num_tokens - 1) / (measured["tokens"] - 1) if transfer == "proportional" else 1.0
  return {s: [min(num_tokens - 1, round(n * scale)) for n in counts]
          for s, counts in rows.items()}


def compile_programs(config, topology: str, batch: int) -> dict:
  """The programs of `programs` compiled for `topology` and timed: the report without prices."""
  config_lib.validate(config)
  devices = compile_check.topology_devices(topology)
  num_tokens = tarflow_config.num_tokens(config)
  guided = bool(config.sample.guidance)
  costs = []
  for program in programs(num_tokens):
    costs.append(program_cost(config, devices, batch, program, guided))
    # Compiling a long sweep of a large model takes minutes on a small host: say how far it got.
    logging.info("%s: %d tokens, cache %d: %.1f µs (%s; compiled in %.0f s)",
                 "sweep" if program["segments"] else "token step", program["tokens"],
                 program["cache_tokens"], costs[-1]["seconds"] * 1e6, costs[-1]["timed_by"],
                 costs[-1]["compile_s"])
  return {"topology": topology, "device_kind": devices[0].device_kind, "devices": len(devices),
          "batch": batch, "guided": guided, "tokens": num_tokens,
          "blocks": config.model.num_blocks,
          "layers_per_block": max(tarflow_config.block_depths(config.model)),
          "dtype": config.model.dtype, "programs": costs}


def price(compiled: dict, sweeps: dict[int, Sequence[int]] | None = None) -> dict:
  """`compile_programs`' report with each sampler's time per image for these sweeps per block."""
  costs = compiled["programs"]
  token_step_s = costs[0]["seconds"]
  sweep_s = {int(c["segments"]): c["seconds"] for c in costs[1:]}
  # Sweeps measured for segment counts not compiled here (e.g. --extra_segments) are left out.
  sweeps = {s: counts for s, counts in (sweeps or {}).items() if s in sweep_s}
  times = per_image(num_tokens=compiled["tokens"], num_blocks=compiled["blocks"],
                    batch=compiled["batch"], token_step_s=token_step_s, sweep_s=sweep_s,
                    sweeps=sweeps or {})
  speedups = {s: times["sequential"] / t for s, t in times["parallel"].items()}
  if sweeps:
    speedups["auto"] = times["sequential"] / times["auto"]
  return {**compiled, "token_step_s": token_step_s, "sweep_s": sweep_s,
          "sweeps_per_block": sweeps or {}, "break_even_sweeps": times["break_even_sweeps"],
          "s_per_image": {"sequential": times["sequential"], **times["parallel"],
                          **({"auto": times["auto"]} if sweeps else {})},
          "speedup_vs_sequential": speedups,
          "auto_plan": times["auto_plan"] if sweeps else None}


def estimate(config, topology: str, batch: int, sweeps: dict[int, Sequence[int]] | None = None
             ) -> dict:
  """The report: every program's cost and, per image, each sampler's estimated time."""
  return price(compile_programs(config, topology, batch), sweeps)


def format_table(report: dict) -> str:
  lines = [f"{report['topology']} ({report['device_kind']}), batch {report['batch']}"
           f"{' guided' if report['guided'] else ''}, {report['tokens']} tokens, "
           f"{report['blocks']} blocks × {report['layers_per_block']} layers, "
           f"{report['dtype']}",
           f"{'program':<16} {'tokens':>6} {'cache':>6} {'time':>10} {'break-even':>11} "
           f"{'GFLOP':>8} {'MB':>8}  timed by"]
  for p in report["programs"]:
    name = "token step" if not p["segments"] else f"sweep, {p['segments']} seg"
    even = report["break_even_sweeps"].get(p["segments"])
    lines.append(f"{name:<16} {p['tokens']:>6} {p['cache_tokens']:>6} "
                 f"{p['seconds'] * 1e6:>8.1f}µs {'' if even is None else f'{even:11.1f}':>11} "
                 f"{p['flops'] / 1e9:>8.2f} {p['bytes'] / 1e6:>8.1f}  {p['timed_by']}")
  for method, seconds in report["s_per_image"].items():
    speedup = report["speedup_vs_sequential"].get(method)
    lines.append(f"per image, {str(method) + (' seg' if isinstance(method, int) else ''):<12} "
                 f"{seconds * 1e3:9.3f} ms" + (f"  {speedup:.2f}× sequential" if speedup else ""))
  return "\n".join(lines)


def _define_flags():
  config_flag = job_flags.define_config("Config file (configs/*.py[:preset]).")
  flags.adopt_module_key_flags(job_flags)
  topology = flags.DEFINE_string("topology", None, "TPU (v5p:1x1x1, v5e:2x2, ...) or GPU "
                                 "(h100:1x1x1) topology, as compile_check takes.")
  batch = flags.DEFINE_integer("batch", None, "Images per sampling call (default: "
                               "config.sample.num_images).")
  sweeps = flags.DEFINE_string("sweeps", None, "benchmarks/sampling.py's JSON: sweeps per block "
                               "of its jacobi / gs_jacobi rows (without: break-even only).")
  transfer = flags.DEFINE_enum("transfer", "per_segment", TRANSFERS, "How --sweeps carry over "
                               "to the config's tokens (load_sweeps).")
  reuse = flags.DEFINE_string("programs", None, "An earlier JSON line of this job: price its "
                              "programs (e.g. with other --sweeps) instead of compiling them.")
  flags.mark_flags_as_required(["config", "topology"])
  flags.FLAGS.set_default("distributed", False)

  def job():
    jax.config.update("jax_enable_compilation_cache", False)  # As compile_check: no client.
    config = config_flag.value
    num_tokens = tarflow_config.num_tokens(config)
    counts = (load_sweeps(sweeps.value, config.model.num_blocks, num_tokens, transfer.value)
              if sweeps.value else None)
    if reuse.value:
      compiled = json.loads(paths.path(reuse.value).read_text().strip().splitlines()[-1])
      if (compiled["tokens"], compiled["blocks"]) != (num_tokens, config.model.num_blocks):
        raise runtime.UserError(f"--programs={reuse.value} was compiled for another model "
                                f"({compiled['tokens']} tokens, {compiled['blocks']} blocks)")
    else:
      try:
        compiled = compile_programs(config, topology.value,
                                    batch.value or config.sample.num_images)
      except compile_check.DoesNotFit as e:
        raise runtime.UserError(f"does not fit on {topology.value}: {e}") from e
    report = {**price(compiled, counts), "transfer": transfer.value if counts else None}
    print(format_table(report))
    print(json.dumps(report))

  return job


if __name__ == "__main__":
  runtime.run(_define_flags())
