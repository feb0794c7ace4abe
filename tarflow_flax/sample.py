"""Batch sampling job: N samples written in resumable NPZ shards plus a PNG grid.

  python -m tarflow_flax.sample --workdir=DIR --num_samples=50000 --outdir=OUT [--method=auto]
  python -m tarflow_flax.sample --checkpoint=/ckpt/afhq --config=configs/afhq256.py ...

Sample i uses latent noise drawn from fold_in(key(seed), i) and (conditional models) class
i mod num_classes, or the --classes list cycled; so every shard is a pure function of its index and
a killed job, started again, skips the finished shards and writes exactly the missing ones. Shards
are written atomically (temporary file + rename) by process 0; the global batch is sharded over all
devices of all hosts. The outdir's `sampling.json` pins config, checkpoint step and sampler
settings; a different run is refused rather than mixed in.
"""

from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from etils import epath
from jax.experimental import multihost_utils
from flax import nnx
from ml_collections import config_flags

from tarflow_flax import checkpoint, sampling, sharding, visualize

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config (default: the checkpoint's).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (reads workdir/checkpoints).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A checkpoint root (e.g. from convert).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_NUM = flags.DEFINE_integer("num_samples", 64, "Total number of samples.")
_OUTDIR = flags.DEFINE_string("outdir", None, "Where shards go.", required=True)
_SHARD = flags.DEFINE_integer("shard_size", 64, "Samples per shard (one global batch).")
_METHOD = flags.DEFINE_enum("method", "sequential", list(sampling.METHODS), "Sampler.")
_TOL = flags.DEFINE_float("tol", sampling.api.DEFAULT_TOL, "Parallel samplers' tolerance.")
_CLASSES = flags.DEFINE_list("classes", None, "Class labels to cycle (default: all, balanced).")
_COND = flags.DEFINE_list(
    "cond", None, "AdaLN models (model.cond_dim > 0): continuous condition values, cond_dim per "
    "vector, vectors cycled over the samples like --classes (default: unconditional).")
_GUIDANCE = flags.DEFINE_float("guidance", None, "Default: config.sample.guidance.")
_ATTN_TEMP = flags.DEFINE_float("attn_temp", None, "Default: config.sample.attn_temp.")
_ANNEALED = flags.DEFINE_bool("annealed_guidance", None, "Default: config.sample.*.")
_DENOISE = flags.DEFINE_bool("denoise", None, "Score-based denoising (default: config).")
_USE_EMA = flags.DEFINE_bool("use_ema", True, "Sample from the EMA weights when present.")
_SEED = flags.DEFINE_integer("seed", 0, "Noise seed.")


def shard_path(outdir, index: int):
  return epath.Path(outdir) / f"shard_{index:05d}.npz"


def shard_labels(config, start: int, count: int, classes) -> np.ndarray | None:
  if not config.model.num_classes:
    return None
  pool = np.asarray(classes if classes else np.arange(config.model.num_classes), np.int32)
  return pool[np.arange(start, start + count) % len(pool)]


def parse_cond(values, cond_dim: int) -> np.ndarray | None:
  """--cond values → (V, cond_dim) float32 vectors, or None (unconditional)."""
  if not values:
    return None
  if not cond_dim:
    raise ValueError("--cond given, but the model has no continuous conditioning "
                     "(model.cond_dim=0)")
  try:
    flat = np.asarray([float(v) for v in values], np.float32)
  except ValueError as e:
    raise ValueError(f"--cond: {e}") from e
  if flat.size % cond_dim:
    raise ValueError(f"--cond has {flat.size} values: not a multiple of model.cond_dim={cond_dim}")
  return flat.reshape(-1, cond_dim)


def shard_cond(vectors, start: int, count: int) -> np.ndarray | None:
  if vectors is None:
    return None
  return vectors[np.arange(start, start + count) % len(vectors)]


def shard_noise(seed: int, start: int, count: int, tokens: int, dim: int) -> np.ndarray:
  """Latents of samples start..start+count−1, each a function of (seed, its index) only."""
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(
      jnp.arange(start, start + count))
  return np.asarray(jax.vmap(lambda k: jax.random.normal(k, (tokens, dim)))(keys))


def global_batch(values: np.ndarray, size: int, sharding) -> jax.Array:
  """Zero-pads `values` to `size` rows and builds a global array from it; every host holds the
  same `values`, so each one only copies the rows of its own devices."""
  padded = np.zeros((size,) + values.shape[1:], values.dtype)
  padded[:len(values)] = values
  return jax.make_array_from_callback(padded.shape, sharding, lambda index: padded[index])


def progress_bar(done: int, total: int, width: int = 30) -> str:
  filled = width * done // max(total, 1)
  return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} images"


def check_outdir(outdir, settings: dict) -> None:
  """Creates sampling.json, or refuses an outdir written with other settings."""
  path = epath.Path(outdir) / "sampling.json"
  if path.exists():
    previous = json.loads(path.read_text())
    if previous != settings:
      diff = sorted(k for k in settings if previous.get(k) != settings[k])
      raise ValueError(f"{outdir} holds samples of another run (differs in {diff}); "
                       "use a new --outdir")
  elif jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2, sort_keys=True))


def run(config, directory: str) -> int:
  model, meta = checkpoint.load_model(directory, config, step=_STEP.value, use_ema=_USE_EMA.value)
  config = config or checkpoint.config_from_meta(meta)
  s = config.sample
  kwargs = dict(guidance=s.guidance if _GUIDANCE.value is None else _GUIDANCE.value,
                guide_what=s.guide_what,
                attn_temp=s.attn_temp if _ATTN_TEMP.value is None else _ATTN_TEMP.value,
                annealed_guidance=(s.annealed_guidance if _ANNEALED.value is None
                                   else _ANNEALED.value))
  denoise = s.denoise if _DENOISE.value is None else _DENOISE.value
  denoise_std = config.data.noise_std if denoise and config.data.noise_type == "gaussian" else None
  classes = [int(c) for c in _CLASSES.value] if _CLASSES.value else None
  cond = parse_cond(_COND.value, config.model.cond_dim)
  settings = {"config": json.loads(config.to_json()), "step": meta["step"],
              "weights": meta["weights"], "method": _METHOD.value, "tol": _TOL.value,
              "seed": _SEED.value, "shard_size": _SHARD.value, "classes": classes,
              "cond": None if cond is None else cond.tolist(),
              "denoise_std": denoise_std, **kwargs}
  check_outdir(_OUTDIR.value, settings)

  mesh = sharding.make_mesh(config.mesh)
  graphdef, state = nnx.split(model)
  model = nnx.merge(graphdef, jax.device_put(state, sharding.state_shardings(state, mesh)))
  num_shards = -(-_NUM.value // _SHARD.value)
  # Every shard (the last too) is padded to one global batch that all devices divide: one compile.
  devices = sharding.data_parallel_size(mesh)
  batch = -(-_SHARD.value // devices) * devices
  # Process 0 decides which shards are missing, so that all hosts run the same batches.
  missing = np.array([not shard_path(_OUTDIR.value, i).exists() for i in range(num_shards)])
  if jax.process_count() > 1:
    missing = multihost_utils.broadcast_one_to_all(missing)
  todo = [i for i in range(num_shards) if missing[i]]
  logging.info("%d of %d shards to write (global batch %d over %d devices)", len(todo),
               num_shards, batch, devices)
  total = sum(min(_SHARD.value, _NUM.value - i * _SHARD.value) for i in todo)
  start_time, done = time.time(), 0
  for index in todo:
    start = index * _SHARD.value
    count = min(_SHARD.value, _NUM.value - start)
    noise = global_batch(shard_noise(_SEED.value, start, count, model.num_tokens,
                                     model.token_dim), batch, sharding.batch_sharding(mesh))
    labels = shard_labels(config, start, count, classes)
    # Labels stay replicated: small, and the model checks their range on the host.
    y = None if labels is None else global_batch(labels, batch, sharding.replicated(mesh))
    values = shard_cond(cond, start, count)
    y_cont = None if values is None else global_batch(values, batch, sharding.replicated(mesh))
    images, _ = sampling.sample(model, noise, y, method=_METHOD.value, tol=_TOL.value,
                                denoise_std=denoise_std, y_cont=y_cont, **kwargs)
    images = visualize.to_uint8(jax.device_get(
        jax.jit(lambda x: x, out_shardings=sharding.replicated(mesh))(images)))[:count]
    if jax.process_index() == 0:
      path = shard_path(_OUTDIR.value, index)
      tmp = path.parent / f".{path.name}.tmp"
      with tmp.open("wb") as f:
        np.savez(f, images=images, labels=np.full(count, -1, np.int32) if labels is None
                 else labels)
      tmp.rename(path)
      if index == 0:
        visualize.save_png(str(epath.Path(_OUTDIR.value) / "grid.png"),
                           visualize.make_grid(images[:64]))
    done += count
    if jax.process_index() == 0:
      print(f"\r{progress_bar(done, total)}  shard {index + 1}/{num_shards}  "
            f"{done / (time.time() - start_time):.2f} img/s", end="", flush=True)
  print()
  return num_shards


def main(argv):
  del argv
  try:
    if bool(_WORKDIR.value) == bool(_CHECKPOINT.value):
      raise ValueError("give exactly one of --workdir or --checkpoint")
    directory = _CHECKPOINT.value or f"{_WORKDIR.value.rstrip('/')}/checkpoints"
    if _NUM.value < 1 or _SHARD.value < 1:
      raise ValueError("--num_samples and --shard_size must be >= 1")
    run(_CONFIG.value, directory)
  except (ValueError, checkpoint.CheckpointError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
