"""What an in-training sample grid and sampling trace cost, against a training step, one run.

  python benchmarks/sample_grid.py --config=configs/default.py [--config.sample_trace=4]

Times the grid (`train.write_sample_images` minus the writer: `config.sample.num_images` samples
with the config's guidance and denoising) and, with config.sample_trace, the trace, each first
(compiling) and then the median of --repeats; and the compiled training step of the same config
as the baseline. Random weights. Prints a table and one JSON line.
"""

import statistics
import time

import jax
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

import common  # benchmarks/common.py (the script's own folder is on sys.path)
import jax.numpy as jnp
from tarflow_flax import runtime, sharding, steps, train
from tarflow_flax.sampling import settings as sample_settings
from tarflow_flax.sampling.trace import sample_trace

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Training config.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs after the first (median).")
_JSON = flags.DEFINE_string("json", None, "Also write the JSON result here.")


def _timed(fn, repeats):
  """(seconds of the first call, median seconds of the next `repeats`)."""
  times = []
  for _ in range(repeats + 1):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times[0], statistics.median(times[1:])


def _train_step_seconds(trainer, shardings, mesh, config, repeats) -> float:
  """Median seconds of the compiled training step on a random batch (the baseline)."""
  state = steps.init_train_state(trainer, mesh, shardings)
  shapes = steps.batch_shapes(config, config.batch_size)
  batch = jax.device_put(
      {"image": jax.random.randint(jax.random.key(0), shapes["image"].shape, 0, 256, jnp.uint8),
       "label": jnp.zeros(shapes["label"].shape, jnp.int32),
       "index": jnp.arange(config.batch_size, dtype=jnp.uint32)}, sharding.batch_sharding(mesh))
  step = steps.compile_train_step(trainer, shardings, mesh)
  times = []
  for _ in range(repeats + 2):  # The first compiles.
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return statistics.median(times[2:])


def main(_):
  config = _CONFIG.value
  mesh = runtime.make_mesh(config)
  trainer, abstract = steps.make_trainer(config)
  shardings = steps.state_shardings(trainer, abstract, mesh)
  step_s = _train_step_seconds(trainer, shardings, mesh, config, _REPEATS.value)
  state = steps.init_train_state(trainer, mesh, shardings)
  model_state = state.ema if state.ema is not None else state.model
  grid = _timed(lambda: next(train.generate_samples(
      trainer.graphdef, model_state, config, mesh, config.sample.num_images, seed=0)),
                _REPEATS.value)
  result = {"device": jax.devices()[0].device_kind, "images": config.sample.num_images,
            "train_step_s": step_s, "grid_first_s": grid[0], "grid_s": grid[1],
            "grid_in_steps": grid[1] / step_s}
  rows = [("training step", step_s, step_s), ("grid", *grid)]
  if config.sample_trace:
    model = nnx.merge(trainer.graphdef, model_state)
    settings = sample_settings.for_trace(config)
    trace = _timed(lambda: sample_trace(model, mesh, seed=0, count=config.sample_trace,
                                        **settings), _REPEATS.value)
    result.update(trace_first_s=trace[0], trace_s=trace[1], trace_in_steps=trace[1] / step_s)
    rows.append((f"trace of {config.sample_trace}", *trace))
  print(f"{'':<16} {'first (s)':>10} {'then (s)':>10} {'steps':>8}")
  for name, first, then in rows:
    print(f"{name:<16} {first:>10.3f} {then:>10.3f} {then / step_s:>8.1f}")
  common.emit_json(result, _JSON.value)


if __name__ == "__main__":
  app.run(main)
