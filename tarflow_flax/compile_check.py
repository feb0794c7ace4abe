"""Ahead-of-time compilation of the train step (or the sampler) for TPUs or GPUs, on any host.

  python -m tarflow_flax.compile_check --config=configs/imagenet64.py[:preset] --topology=v5p:2x2x2 \
      [--batch=N] [--what=train|sample] [--config.model.scan_layers=False] [--config.key=value ...]

Builds the trainer's own step (steps.compile_train_step: same functions, shardings and donation)
over the devices of a TPU topology (libtpu compiles it; no TPU is needed), of NVIDIA GPUs
(`h100:SxHxG`: slices × hosts × GPUs per host; the CUDA plugin compiles it, no GPU is needed) or
`--topology=local`, lowers it with abstract sharded arguments (nothing is allocated) and reports
memory per chip, model FLOPs, the collectives in the compiled HLO, the attention kernel and, when
layers are unrolled on a TPU, the TPU cost model's step time and MFU. Prints a table and one JSON
line; exits 1 with one `error:` line when the step does not fit in the chips' memory. Needs the
`tpu` extra (`pip install -e ".[tpu]"`) for TPU topologies, the `gpu` extra for GPU ones.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from tarflow_flax import config_lib, flops, gpu_targets, job_flags, models, runtime, sharding
from tarflow_flax import steps
from tarflow_flax.models import attention, tarflow_config, transformer
from tarflow_flax.sampling import api as sampling_api

# HBM per chip (GiB) by device kind prefix (longest prefix wins).
HBM_GIB = {"TPU v4": 32.0, "TPU v5 lite": 16.0, "TPU v5": 95.0, "TPU v6 lite": 32.0}
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}


class DoesNotFit(RuntimeError):
  """The step needs more memory per chip than the chips have."""


def topology_devices(name: str) -> list:
  """The devices of a TPU or GPU topology (compiled for, never run on) or the local devices."""
  if name == "local":
    return jax.devices()
  if gpu_targets.is_gpu_topology(name):
    return gpu_targets.devices(name)
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  # Only compiling here: do not fail when another process on the host holds libtpu's lock, and
  # give libtpu a worker list so that it does not look for a TPU VM's metadata (and warn).
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  # One chip (v5p:1x1x1, v5e:1x1): libtpu's default host bounds (2x2x1) do not divide it.
  one_chip = re.fullmatch(r"[^:]+:1(x1)*", name)
  options = {"chips_per_host_bounds": [1, 1, 1]} if one_chip else {}
  try:
    return list(topologies.get_topology_desc(platform="tpu", topology_name=name,
                                              **options).devices)
  except Exception as e:  # libtpu raises plain RuntimeErrors / XlaRuntimeErrors.
    raise ValueError(f"--topology={name}: not a TPU topology libtpu knows "
                     f"({str(e).splitlines()[0][:200]}); install the tpu extra") from e


def hbm_gib(device) -> float | None:
  """Memory per chip of `device` that a step may use, or None when unknown (CPU)."""
  usable = gpu_targets.usable_memory_gib(device) if device.platform == "gpu" else None
  if usable is not None:
    return usable  # Abstract GPUs have no memory_stats().
  if device.platform != "tpu":  # Local GPUs report their memory; CPUs do not.
    stats = device.memory_stats() or {}
    return stats["bytes_limit"] / 2**30 if "bytes_limit" in stats else None
  for prefix, gib in sorted(HBM_GIB.items(), key=lambda kv: -len(kv[0])):
    if device.device_kind.startswith(prefix):
      return gib
  return None


def _for_platform(config, devices):
  """`model.attention='auto'` resolved for the target devices (the host may be a CPU)."""
  config = config.copy_and_resolve_references()
  tokens = tarflow_config.num_tokens(config)
  config.model.attention = attention.resolve(config.model.attention, tokens, devices[0].platform)
  return config


def lower_train_step(config, devices, batch: int):
  """The trainer's jitted train step lowered for `devices` with abstract sharded arguments."""
  config = _for_platform(config, devices)
  config.batch_size = batch
  mesh = sharding.make_mesh(config.mesh, devices)
  dp = sharding.data_parallel_size(mesh)
  if batch % (dp * config.grad_accum_steps):
    raise ValueError(f"batch {batch} must be divisible by the data-parallel size {dp} × "
                     f"grad_accum_steps {config.grad_accum_steps}")
  trainer, abstract_model = steps.make_trainer(config)
  shardings = steps.state_shardings(trainer, abstract_model, mesh)
  state = sharding.abstract_on(jax.eval_shape(trainer.init_state, abstract_model), shardings)
  batch_args = sharding.abstract_on(steps.batch_shapes(config, batch),
                        jax.tree.map(lambda _: sharding.batch_sharding(mesh),
                                     steps.batch_shapes(config, batch)))
  jitted = steps.compile_train_step(trainer, shardings, mesh)
  return jitted.lower(state, batch_args), mesh, config


def lower_sampler_steps(config, devices, batch: int, segment: int, *, guided: bool = False,
                        cache_tokens: int | None = None, hoisted_casts: bool = False):
  """One block's KV-cached step over `segment` tokens (1: the sequential sampler's per-token step;
  T/8: a GS-Jacobi sweep), for the block with the most layers, lowered for `devices`.

  guided: the classifier-free-guided pass (2·batch rows). cache_tokens: the cache's length (None:
  all T tokens, the longest step). hoisted_casts: the matmul kernels arrive in the compute dtype,
  as inside the samplers' token loops, where XLA casts the float32 kernels once, before the loop.
  """
  config = _for_platform(config, devices)
  mesh = sharding.make_mesh(config.mesh, devices)
  if batch % sharding.data_parallel_size(mesh):
    raise ValueError(f"batch {batch} must be divisible by the data-parallel size "
                     f"{sharding.data_parallel_size(mesh)}")
  model = nnx.eval_shape(lambda: models.build_model(config))
  block = max(model.blocks, key=lambda b: b.num_layers)
  graphdef, abstract_block = nnx.split(block)
  block_state = sharding.abstract_on(abstract_block, sharding.state_shardings(abstract_block, mesh))
  if hoisted_casts:
    block_state = jax.tree_util.tree_map_with_path(
        lambda path, a: (jax.ShapeDtypeStruct(a.shape, config.model.dtype, sharding=a.sharding)
                         if "kernel" in jax.tree_util.keystr(path) else a), block_state)
  data = sharding.batch_sharding(mesh)
  per_layer = (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(sharding.DATA_AXES)),
               ) * block.num_layers
  cache_sharding = transformer.KVCache(per_layer, per_layer)
  rows, c = (2 if guided else 1) * batch, config.model.channels
  # Full length by default: the samplers grow their caches as they go; this is the largest step.
  # Shapes only: a sampling batch's cache can exceed this host's memory.
  cache = jax.eval_shape(lambda: transformer.KVCache.zeros(
      block.num_layers, rows, cache_tokens or model.num_tokens, c, jnp.dtype(config.model.dtype)))
  cache = sharding.abstract_on(cache, cache_sharding)
  tokens = jax.ShapeDtypeStruct((batch, segment, model.token_dim), jnp.float32, sharding=data)

  def token_step(state, x, cache, position):
    b = nnx.merge(graphdef, state)
    a, shift, cache = b.cached_params(b.sampling_pass(None, batch, guided=guided), x, position,
                                      cache, 1.0 if guided else None)
    return (a, shift), cache

  jitted = jax.jit(steps.traced_on_mesh(token_step, mesh),
                   out_shardings=((data, data), cache_sharding),
                   donate_argnums=(2,))
  position = jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding.replicated(mesh))
  return jitted.lower(block_state, tokens, cache, position), mesh, config


_COLLECTIVE_OP = re.compile(r"=\s*(\(.*?\)|\S+)\s+(%s)(-start)?\(" % "|".join(COLLECTIVES))


# An instruction of HLO text, `[ROOT] %name = shape op(...`: (name, shape, op). A tuple shape may
# hold `/*index=5*/` comments.
HLO_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\(.*?\)|\S+) ([\w-]+)\(", re.M)


def hlo_ops(hlo_text: str) -> list[str]:
  """The op of every instruction in HLO text, in order (`fusion`, `dot`, `while`, ...)."""
  return [match.group(3) for match in HLO_INSTRUCTION.finditer(hlo_text)]


def hlo_arrays(shape_text: str) -> list[tuple[str, int]]:
  """[(dtype, elements), ...] of the arrays in an HLO shape (`f32[8,64]{1,0}` or a tuple)."""
  return [(dt, int(np.prod([int(d) for d in dims.split(",") if d])))
          for dt, dims in re.findall(r"(\w+)\[([\d,]*)\]", shape_text)]


def array_bytes(dtype: str, elements: int) -> int:
  return _DTYPE_BYTES.get(dtype, 4) * elements


def _collective_results(hlo_text: str):
  """(op, [(dtype, elements), ...]) for each collective in HLO text (an async start's tuple holds
  its input and output)."""
  for line in hlo_text.splitlines():
    match = _COLLECTIVE_OP.search(line)
    if match:
      yield match.group(2), hlo_arrays(match.group(1))


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """{op: {'count', 'bytes'}} of the collectives in compiled HLO text (result bytes per device;
  an op inside a loop body is counted once)."""
  out = {op: {"count": 0, "bytes": 0} for op in COLLECTIVES}
  for op, results in _collective_results(hlo_text):
    out[op]["count"] += 1
    out[op]["bytes"] += max((array_bytes(dt, n) for dt, n in results), default=0)
  return out


def collective_sizes(hlo_text: str, op: str) -> dict[str, list[int]]:
  """{dtype: [result elements, ...]} of one collective op: what dtype moves over the links."""
  out = {}
  for name, results in _collective_results(hlo_text):
    if name == op and results:
      dtype, elements = max(results, key=lambda r: r[1])
      out.setdefault(dtype, []).append(elements)
  return out


def pallas_kernels(hlo_text: str) -> int:
  """Number of Pallas (Mosaic) kernel calls in compiled TPU HLO text, e.g. splash attention's
  forward and backward: shows that the kernel, not an XLA fallback, is what runs."""
  return len(re.findall(r'custom_call_target="tpu_custom_call"', hlo_text))


def cost_analysis(compiled) -> dict:
  """The compiled program's cost analysis ({} where XLA has none, e.g. GPUs)."""
  cost = compiled.cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost) or {}


def peak_memory_gib(compiled) -> float:
  """Memory per chip a compiled program needs: arguments + temporaries + outputs − aliased."""
  mem = compiled.memory_analysis()
  return (mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes -
          mem.alias_size_in_bytes) / 2**30


def report(compiled, *, topology: str, devices, mesh, batch: int, compile_s: float,
           model_flops: float, loop_note: str | None, compiler_options: dict | None = None
           ) -> dict:
  """The JSON-able summary of one compiled program; `loop_note`: why the cost model's time is
  withheld when the program loops over its layers (None: layers are unrolled)."""
  mem = compiled.memory_analysis()
  peak_bytes = peak_memory_gib(compiled) * 2**30
  hbm = hbm_gib(devices[0])
  peak_tflops = flops.peak_tflops(devices[0].device_kind)
  cost = cost_analysis(compiled)
  hlo_text = compiled.as_text()
  step_s = cost.get("optimal_seconds")
  result = {
      "topology": topology, "device_kind": devices[0].device_kind, "devices": len(devices),
      "mesh": dict(mesh.shape), "batch": batch,
      "fits": hbm is None or peak_bytes / 2**30 <= hbm,
      "hbm_per_chip_gib": hbm, "peak_memory_per_chip_gib": peak_bytes / 2**30,
      "argument_gib": mem.argument_size_in_bytes / 2**30,
      "temp_gib": mem.temp_size_in_bytes / 2**30, "compile_s": compile_s,
      "model_tflops_per_step": model_flops / 1e12,
      "cost_model_step_s": None, "cost_model_mfu": None,
      # What the cost model counts per chip (remat recompute included): hardware FLOPs.
      "cost_model_tflops_per_chip": cost["flops"] / 1e12 if "flops" in cost else None,
      "collectives": collectives(hlo_text),
      "pallas_kernels": pallas_kernels(hlo_text),
      "cudnn_attention_calls": gpu_targets.cudnn_attention_calls(hlo_text),
      "compiler_options": compiler_options or {},
  }
  if devices[0].platform == "gpu":
    result["memory_note"] = (f"usable share of device memory ({gpu_targets.MEMORY_FRACTION_ENV}, "
                             f"default {gpu_targets.DEFAULT_MEMORY_FRACTION}); cuDNN workspaces "
                             "are not counted")
  if not cost:
    # XLA's GPU compiler answers cost_analysis() with None: only the analytic model's FLOPs.
    result["cost_model_note"] = (f"XLA has no cost model for {devices[0].platform} (no step time "
                                 "or MFU); model_tflops_per_step is the analytic count")
  elif loop_note:
    result["cost_model_note"] = loop_note
  elif step_s and step_s > 0:
    result["cost_model_step_s"] = step_s
    if peak_tflops:
      result["cost_model_mfu"] = model_flops / len(devices) / (step_s * peak_tflops * 1e12)
  else:  # libtpu answers a negative time for a program it cannot estimate.
    result["cost_model_note"] = f"the TPU cost model gave no step time (optimal_seconds={step_s})"
  return result


_SCANNED_NOTE = ("layers are scanned: the cost model counts a layer once; rerun with "
                 "--config.model.scan_layers=False for step time and MFU")


# Without a GPU, XLA cannot autotune its Triton GEMMs, and for some shapes (the imagenet64
# GS-Jacobi sweep's (8·127, 768) × (768, 768) matmul) its untuned tiling finds no tile sizes:
# those programs are compiled with cuBLAS GEMMs, one of the autotuner's choices on a GPU.
NO_TRITON_GEMM = {"xla_gpu_enable_triton_gemm": False}


def compile_lowered(lowered, options: dict | None = None):
  """(compiled, seconds, the compiler options it needed, `options` included)."""
  start, options = time.perf_counter(), dict(options or {})
  try:
    try:
      compiled = lowered.compile(compiler_options=options or None)
    except jax.errors.JaxRuntimeError as e:
      if "find output tile sizes" not in str(e):
        raise
      options = {**options, **NO_TRITON_GEMM}
      compiled = lowered.compile(compiler_options=options)
  except Exception as e:  # XLA reports HBM exhaustion at compile time on TPU.
    text = str(e)
    if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
      raise DoesNotFit(text.splitlines()[0][:300]) from e
    raise
  return compiled, time.perf_counter() - start, options


def check_train(config, topology: str, batch: int | None = None) -> dict:
  """Compiles the train step for `topology`; the report (raises DoesNotFit when it cannot fit)."""
  config_lib.validate(config)
  devices = topology_devices(topology)
  batch = batch or config.batch_size
  lowered, mesh, config = lower_train_step(config, devices, batch)
  compiled, compile_s, options = compile_lowered(lowered)
  result = report(compiled, topology=topology, devices=devices, mesh=mesh, batch=batch,
                  compile_s=compile_s, compiler_options=options,
                  model_flops=batch * flops.train_flops_per_image(config),
                  loop_note=_SCANNED_NOTE if config.model.scan_layers else None)
  attention_kernel = config.model.attention
  if attention_kernel == "cudnn" and not result["cudnn_attention_calls"]:
    attention_kernel = "xla"  # cuDNN takes bf16/fp16 on GPUs; elsewhere XLA's attention runs.
  result.update(what="train", attention=attention_kernel, remat=config.model.remat,
                remat_policy=config.model.remat_policy, dtype=config.model.dtype,
                grad_accum_steps=config.grad_accum_steps)
  if not result["fits"]:
    raise DoesNotFit(f"needs {result['peak_memory_per_chip_gib']:.1f} GiB per chip, "
                     f"the chips have {result['hbm_per_chip_gib']:.0f} GiB")
  return result


def check_sample(config, topology: str, batch: int | None = None) -> list[dict]:
  """Compiles the sampler's per-token step and a GS-Jacobi sweep; one report each."""
  config_lib.validate(config)
  devices = topology_devices(topology)
  batch = batch or config.sample.num_images
  tokens = tarflow_config.num_tokens(config)
  results = []
  sweep = max(1, (tokens - 1) // sampling_api.DEFAULT_GS_SEGMENTS)
  for name, segment in (("sequential_token_step", 1), ("gs_jacobi_sweep", sweep)):
    lowered, mesh, resolved = lower_sampler_steps(config, devices, batch, segment)
    compiled, compile_s, options = compile_lowered(lowered)
    depth = max(tarflow_config.block_depths(resolved.model))
    result = report(compiled, topology=topology, devices=devices, mesh=mesh, batch=batch,
                    compile_s=compile_s, compiler_options=options,
                    model_flops=batch * flops.block_step_flops(resolved, depth, segment),
                    # The KV-cached step unrolls its layers (transformer.step_layers): no
                    # loop, so the cost model's time covers the whole step.
                    loop_note=None)
    # The KV-cached step attends with einsums over its cache whatever model.attention says.
    result.update(what=name, tokens=segment, attention="xla")
    if not result["fits"]:
      raise DoesNotFit(f"{name} needs {result['peak_memory_per_chip_gib']:.1f} GiB per chip, "
                       f"the chips have {result['hbm_per_chip_gib']:.0f} GiB")
    results.append(result)
  return results


def format_table(result: dict) -> str:
  rows = []
  for key, value in result.items():
    if key == "collectives":
      for op, v in value.items():
        if v["count"]:
          rows.append((f"  {op}", f"{v['count']} ops, {v['bytes'] / 2**20:.2f} MiB"))
      continue
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    rows.append((key, text))
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def check(config, topology: str, what: str = "train", batch: int | None = None) -> list[dict]:
  """The reports of `what` ('train': the train step; 'sample': the sampler's steps) compiled for
  `topology`; raises DoesNotFit when a step cannot fit."""
  if what == "train":
    return [check_train(config, topology, batch)]
  if what == "sample":
    return check_sample(config, topology, batch)
  raise ValueError(f"what must be 'train' or 'sample', got {what!r}")


def _define_flags():
  """The CLI's flags → the job: prints a table and one JSON line per compiled step."""
  config = job_flags.define_config("Config file (configs/*.py[:preset]).")
  flags.adopt_module_key_flags(job_flags)  # --help lists the shared flags too.
  topology = flags.DEFINE_string("topology", "local",
                                 "TPU topology (v5p:2x2x2, v5e:4x4, v6e:8x8, ...), GPUs "
                                 "(h100:1x1x8: slices x hosts x GPUs per host) or 'local'.")
  batch = flags.DEFINE_integer("batch", None, "Global batch (default: config.batch_size; for "
                               "--what=sample: config.sample.num_images).")
  what = flags.DEFINE_enum("what", "train", ["train", "sample"],
                           "train: the training step; sample: the sequential sampler's "
                           "per-token step and one GS-Jacobi sweep.")
  flags.mark_flags_as_required(["config"])
  # Compiling is one process's work: never wait for (or start) a slice's other workers.
  flags.FLAGS.set_default("distributed", False)

  def job():
    if topology.value != "local":
      # An executable compiled for absent devices cannot be read back from JAX's persistent
      # cache (there is no client to load it into): a cached entry would only warn and recompile.
      jax.config.update("jax_enable_compilation_cache", False)
    try:
      results = check(config.value, topology.value, what.value, batch.value)
    except DoesNotFit as e:
      raise runtime.UserError(f"does not fit on {topology.value}: {e}") from e
    for result in results:
      print(format_table(result))
      print(json.dumps(result))

  return job


if __name__ == "__main__":
  runtime.run(_define_flags())
