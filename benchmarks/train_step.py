"""Training-step benchmark: compile time, step time, images/s, FLOPs/image, MFU, peak memory.

  python benchmarks/train_step.py --config=configs/imagenet64.py --batch=8 --steps=3 \
      [--config.model.dtype=float32] [--config.model.remat=False] [--peak_tflops=...] [--json=F]

Times the real sharded step of the trainer (steps.compile_train_step) on random data over all
local devices. Prints a table and one JSON line. Absolute times only mean something on the
accelerator the numbers were taken on.
"""

import resource
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

import common  # benchmarks/common.py (the script's own folder is on sys.path)
from tarflow_flax import flops, sharding, steps

_CONFIG = config_flags.DEFINE_config_file("config", "configs/imagenet64.py", "Model config.")
_BATCH = flags.DEFINE_integer("batch", 8, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps (after one warm-up step).")
_PEAK = flags.DEFINE_float("peak_tflops", None, "Peak TFLOP/s per device (default: by kind).")
_JSON = flags.DEFINE_string("json", None, "Also write the JSON result to this file.")


def peak_memory_gib() -> float:
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**30
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Host RSS (CPU backend).


def main(argv):
  del argv
  config = _CONFIG.value
  config.batch_size = _BATCH.value
  mesh = sharding.make_mesh(config.mesh)
  trainer, abstract = steps.make_trainer(config)
  shardings = steps.state_shardings(trainer, abstract, mesh)
  state = steps.init_train_state(trainer, mesh, shardings)
  shapes = steps.batch_shapes(config, config.batch_size)  # uint8 images, labels, indices.
  batch = jax.device_put(
      {"image": jax.random.randint(jax.random.key(0), shapes["image"].shape, 0, 256, jnp.uint8),
       "label": jnp.zeros(shapes["label"].shape, jnp.int32),
       "index": jnp.arange(config.batch_size, dtype=jnp.uint32)}, sharding.batch_sharding(mesh))

  start = time.perf_counter()
  compiled = steps.compile_train_step(trainer, shardings, mesh).lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  state, metrics = compiled(state, batch)  # Warm-up.
  jax.block_until_ready(metrics)
  times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  kind = jax.devices()[0].device_kind
  peak = _PEAK.value or flops.peak_tflops(kind)
  per_image = flops.train_flops_per_image(config)  # Model FLOPs (3× forward).
  hardware_per_image = flops.hardware_train_flops_per_image(config)  # + remat's recompute.
  images_per_s = config.batch_size / step_s
  mfu = hfu = None
  if peak:
    mfu = flops.utilization(per_image, images_per_s, peak, jax.device_count())
    hfu = flops.utilization(hardware_per_image, images_per_s, peak, jax.device_count())
  result = {
      "device": kind, "devices": jax.device_count(), "params_M": flops.num_params(config) / 1e6,
      "image_size": config.image_size, "patch": config.model.patch_size,
      "channels": config.model.channels, "blocks": config.model.num_blocks,
      "layers": str(config.model.layers_per_block), "dtype": config.model.dtype,
      "remat": config.model.remat, "remat_policy": config.model.remat_policy,
      "batch": config.batch_size, "compile_s": compile_s,
      "step_s": step_s, "images_per_s": images_per_s, "train_gflops_per_image": per_image / 1e9,
      "achieved_tflops": per_image * images_per_s / 1e12, "mfu": mfu, "hfu": hfu,
      "attention": config.model.attention,
      "peak_memory_gib": peak_memory_gib(), "loss": float(metrics["loss"]),
  }
  width = max(map(len, result))
  for key, value in result.items():
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    print(f"{key:<{width}}  {text}")
  common.emit_json(result, _JSON.value)


if __name__ == "__main__":
  app.run(main)
