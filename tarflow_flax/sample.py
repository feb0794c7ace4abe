"""Batch sampling job: N samples written in resumable NPZ shards plus a PNG grid.

  python -m tarflow_flax.sample --workdir=DIR --num_samples=50000 --outdir=OUT [--method=auto]
  python -m tarflow_flax.sample --checkpoint=/ckpt/afhq --config=configs/afhq256.py ...

Run it on every host of a slice, like training (DIR and OUT may be gs://). Sample i uses latent
noise from fold_in(key(seed), i) and (conditional models) class i mod num_classes, or the
--classes list cycled (sampling/batches.py): each shard is a pure function of its index, whatever
the device or process count, and a killed job, started again, writes exactly the missing shards.
Each shard is one global batch split over all devices of all hosts; process 0 writes it
atomically. `OUT/sampling.json` pins config, checkpoint step and sampler settings (and, for
--method=auto, the plan calibrated once on the job's first latents, reused on resume); a
different run is refused rather than mixed in. Exit status 75: stopped by a signal, rerun to
finish.
"""

from __future__ import annotations

import json
import time

import jax
import numpy as np
from absl import flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags

from tarflow_flax import runtime, sampling, visualize
from tarflow_flax.fid import protocols as fid_protocols
from tarflow_flax.sampling import batches, strategy
from tarflow_flax.sampling.trace import sample_trace

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
_DENOISE_LR = flags.DEFINE_float("denoise_lr", None, "Denoising step as a multiple of "
                                 "σ²·∇log p, 0: off (default: config.sample.denoise_lr).")
_USE_EMA = flags.DEFINE_bool("use_ema", True, "Sample from the EMA weights when present.")
_SEED = flags.DEFINE_integer("seed", 0, "Noise seed.")
_TRACE = flags.DEFINE_bool("trace", False, "Also write OUT/trace.png: for the first (up to 8) "
                           "samples, the image after each block, from the noise to the sample "
                           "(and the denoised one), exact sequential inverse, one row each.")
_FID_PROTOCOL = flags.DEFINE_enum("fid_protocol", fid_protocols.DEFAULT_PROTOCOL,
                                  list(fid_protocols.PROTOCOLS),
                                  "How the float samples become the stored uint8 (FID input).")


def shard_path(outdir, index: int):
  return outdir / f"shard_{index:05d}.npz"


def progress_bar(done: int, total: int, width: int = 30) -> str:
  filled = width * done // max(total, 1)
  return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} images"


# Written into sampling.json by the job, not settings to compare: the auto plan, and per shard
# how many non-finite samples were drawn again.
_PLAN_KEY, _REDRAWN_KEY = "auto_plan", "redrawn"


def check_outdir(outdir, settings: dict) -> dict:
  """Creates sampling.json, or refuses an outdir written with other settings; returns what the
  file holds (settings, and the auto plan once calibrated)."""
  path = outdir / "sampling.json"
  if path.exists():
    previous = json.loads(path.read_text())
    pinned = {k: v for k, v in previous.items() if k not in (_PLAN_KEY, _REDRAWN_KEY)}
    if pinned != settings:
      diff = sorted(k for k in set(settings) | set(pinned) if pinned.get(k) != settings.get(k))
      raise runtime.UserError(f"{outdir} holds samples of another run (differs in {diff}); "
                              "use a new --outdir")
    return previous
  multihost_utils.sync_global_devices("sampling.json checked")  # Nobody reads our new file.
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2, sort_keys=True))
  return settings


def calibrated_plan(model, outdir, record: dict, batch: int, guidance: dict) -> dict:
  """--method=auto: per-block plans and tolerance calibrated once per job on its first latents
  and kept in sampling.json, so a resumed job samples exactly as the first run did."""
  if _PLAN_KEY not in record:
    noise = batches.latents(_SEED.value, 0, batch, model.num_tokens, model.token_dim)
    labels = batches.class_labels(model.num_classes, 0, batch, record["classes"])
    cond = None if record["cond"] is None else np.asarray(record["cond"], np.float32)
    _, report = strategy.calibrate(model, noise, labels, tol=_TOL.value,
                                   y_cont=batches.conditions(cond, 0, batch), **guidance)
    record = {**record, _PLAN_KEY: report}
    multihost_utils.sync_global_devices("auto plan calibrated")
    if jax.process_index() == 0:
      (outdir / "sampling.json").write_text(json.dumps(record, indent=2, sort_keys=True))
  logging.info("auto plan: %s", strategy.summary(record[_PLAN_KEY]))
  return {"method": "auto", "calibration": record[_PLAN_KEY]}


def record_redrawn(outdir, index: int, redrawn: int) -> None:
  """Process 0 notes in sampling.json how many samples of shard `index` were drawn again (before
  the shard is written, so that a resumed job never loses a count)."""
  if redrawn:
    path = outdir / "sampling.json"
    record = json.loads(path.read_text())
    record.setdefault(_REDRAWN_KEY, {})[str(index)] = redrawn
    path.write_text(json.dumps(record, indent=2, sort_keys=True))


def redrawn_total(outdir) -> int:
  return sum(json.loads((outdir / "sampling.json").read_text()).get(_REDRAWN_KEY, {}).values())


def write_shard(outdir, index: int, images: np.ndarray, labels, grid_columns=None) -> None:
  """shard_{index}.npz, atomically (a temporary name, then a rename), and grid.png with shard 0."""
  path = shard_path(outdir, index)
  tmp = path.parent / f".{path.name}.tmp"
  with tmp.open("wb") as f:
    np.savez(f, images=images,
             labels=np.full(len(images), -1, np.int32) if labels is None else labels)
  tmp.rename(path)
  if index == 0:
    visualize.save_png(outdir / "grid.png", visualize.make_grid(images[:100], ncol=grid_columns))


def run(config, root) -> int:
  """Writes the missing shards; returns the number of shards of the job."""
  model, config, mesh, meta = runtime.restore_model(root, config, step=_STEP.value,
                                                    use_ema=_USE_EMA.value)
  s = config.sample
  guidance = dict(guidance=s.guidance if _GUIDANCE.value is None else _GUIDANCE.value,
                  guide_what=s.guide_what,
                  attn_temp=s.attn_temp if _ATTN_TEMP.value is None else _ATTN_TEMP.value,
                  annealed_guidance=(s.annealed_guidance if _ANNEALED.value is None
                                     else _ANNEALED.value))
  denoise = s.denoise if _DENOISE.value is None else _DENOISE.value
  denoise_std = config.data.noise_std if denoise and config.data.noise_type == "gaussian" else None
  denoise_lr = s.denoise_lr if _DENOISE_LR.value is None else _DENOISE_LR.value
  if denoise_lr < 0:
    raise runtime.UserError(f"--denoise_lr={denoise_lr}: must be >= 0 (0: no denoising)")
  classes = [int(c) for c in _CLASSES.value] if _CLASSES.value else None
  outdir = runtime.path(_OUTDIR.value)
  cond = batches.parse_cond(_COND.value, config.model.cond_dim)
  settings = {"config": json.loads(config.to_json()), "step": meta["step"],
              "weights": meta["weights"], "method": _METHOD.value, "tol": _TOL.value,
              "seed": _SEED.value, "shard_size": _SHARD.value, "classes": classes,
              "cond": None if cond is None else cond.tolist(),
              "denoise_std": denoise_std, "denoise_lr": denoise_lr if denoise_std else None,
              "fid_protocol": _FID_PROTOCOL.value, **guidance}
  record = check_outdir(outdir, settings)

  num_shards = -(-_NUM.value // _SHARD.value)
  batch = batches.padded_size(_SHARD.value, mesh)  # Every shard, the last too: one compile.
  options = {"method": _METHOD.value, "tol": _TOL.value}
  if _METHOD.value == "auto":
    options = calibrated_plan(model, outdir, record, batch, guidance)
  # Process 0 decides which shards are missing, so that all hosts run the same batches.
  missing = np.array([not shard_path(outdir, i).exists() for i in range(num_shards)])
  if jax.process_count() > 1:
    missing = multihost_utils.broadcast_one_to_all(missing)
  todo = [i for i in range(num_shards) if missing[i]]
  logging.info("%d of %d shards to write (global batch %d over %d devices, %d processes)",
               len(todo), num_shards, batch, jax.device_count(), jax.process_count())
  total = sum(min(_SHARD.value, _NUM.value - i * _SHARD.value) for i in todo)
  start_time, done = time.time(), 0
  with runtime.StopSignal() as stop:
    for position, index in enumerate(todo):
      if stop.should_stop(position):
        raise runtime.Interrupted(f"stopped with {len(todo) - position} shards left in "
                                  f"{outdir}; rerun the same command to finish")
      start = index * _SHARD.value
      count = min(_SHARD.value, _NUM.value - start)
      images, labels, info = batches.generate(
          model, mesh, seed=_SEED.value, start=start, count=count, batch=batch, classes=classes,
          cond=cond, denoise_std=denoise_std, denoise_lr=denoise_lr, **options, **guidance)
      if position == 0:
        logging.info("process %d computed %d of the %d rows of each batch", jax.process_index(),
                     info["local_rows"], batch)
      if jax.process_index() == 0:
        record_redrawn(outdir, index, info["redrawn"])
        write_shard(outdir, index, fid_protocols.to_uint8(images, _FID_PROTOCOL.value), labels,
                    grid_columns=config.model.num_classes or None)
      done += count
      if jax.process_index() == 0:
        print(f"\r{progress_bar(done, total)}  shard {index + 1}/{num_shards}  "
              f"{done / (time.time() - start_time):.2f} img/s", end="", flush=True)
  multihost_utils.sync_global_devices("shards written")
  if _TRACE.value:  # Every process computes it (the model is sharded); process 0 writes it.
    trace = sample_trace(model, mesh, seed=_SEED.value, count=min(_NUM.value, 8),
                         classes=classes, cond=cond, denoise_std=denoise_std,
                         denoise_lr=denoise_lr, **guidance)
    if jax.process_index() == 0:
      visualize.save_png(outdir / "trace.png", visualize.trace_grid(visualize.to_uint8(
          visualize.finite_samples(trace, "sampling trace"))))
  if jax.process_index() == 0:
    print(f"\nwrote {_NUM.value} samples in {num_shards} shards to {outdir} "
          f"(sampling.json, grid.png{', trace.png' if _TRACE.value else ''}); "
          f"{redrawn_total(outdir)} non-finite samples were drawn again", flush=True)
  return num_shards


def main() -> None:
  if _NUM.value < 1 or _SHARD.value < 1:
    raise runtime.UserError("--num_samples and --shard_size must be >= 1")
  run(_CONFIG.value, runtime.checkpoint_root(_WORKDIR.value, _CHECKPOINT.value))


if __name__ == "__main__":
  runtime.run(main)
