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

As a library: `run_job(root, Options(outdir=...), config=None)` (what the CLI calls).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Sequence

import jax
import numpy as np
from absl import flags, logging
from jax.experimental import multihost_utils

from tarflow_flax import checkpoint, job_flags, runtime, visualize
from tarflow_flax.fid import protocols as fid_protocols
from tarflow_flax.sampling import api as sampling_api
from tarflow_flax.sampling import batches, strategy
from tarflow_flax.sampling import settings as sample_settings
from tarflow_flax.sampling.trace import sample_trace

TRACE_SAMPLES = 8  # Rows of trace.png (fewer when the job draws fewer samples).


@dataclasses.dataclass(frozen=True)
class Options:
  """What a sampling job writes. The sampler settings left None come from config.sample."""
  outdir: str
  num_samples: int = 64
  shard_size: int = 64  # Samples per shard (one global batch).
  method: str | None = None
  tol: float = sampling_api.DEFAULT_TOL
  classes: Sequence[int] | None = None  # Class labels to cycle (default: all, balanced).
  cond: Sequence[str | float] | None = None  # AdaLN condition values, cond_dim per vector.
  guidance: float | None = None
  attn_temp: float | None = None
  annealed_guidance: bool | None = None
  denoise: bool | None = None
  denoise_lr: float | None = None
  step: int | None = None  # Checkpoint step (default: latest).
  use_ema: bool = True
  seed: int = 0
  fid_protocol: str = fid_protocols.DEFAULT_PROTOCOL
  trace: bool = False  # Also write trace.png (sampling/trace.py) of the first samples.

  def __post_init__(self):
    if self.num_samples < 1 or self.shard_size < 1:
      raise runtime.UserError("--num_samples and --shard_size must be >= 1")


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


def calibrated_plan(model, outdir, record: dict, batch: int, guidance: dict, *, seed: int,
                    tol: float) -> dict:
  """--method=auto: per-block plans and tolerance calibrated once per job on its first latents
  and kept in sampling.json, so a resumed job samples exactly as the first run did."""
  if _PLAN_KEY not in record:
    noise = batches.latents(seed, 0, batch, model.num_tokens, model.token_dim)
    labels = batches.class_labels(model.num_classes, 0, batch, record["classes"])
    cond = None if record["cond"] is None else np.asarray(record["cond"], np.float32)
    _, report = strategy.calibrate(model, noise, labels, tol=tol,
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


def run_job(root, options: Options, config=None) -> int:
  """Writes the missing shards of the checkpoint at `root` into options.outdir; returns the
  number of shards of the job. config: the model's config (default: the checkpoint's)."""
  model, config, mesh, meta = checkpoint.load_model(root, config, step=options.step,
                                                    use_ema=options.use_ema,
                                                    mesh=runtime.make_mesh)
  guidance = sample_settings.from_config(
      config, method=options.method, guidance=options.guidance, attn_temp=options.attn_temp,
      annealed_guidance=options.annealed_guidance, denoise=options.denoise,
      denoise_lr=options.denoise_lr)
  method = guidance.pop("method")  # What stays: the guidance settings.
  denoise_std, denoise_lr = guidance.pop("denoise_std"), guidance.pop("denoise_lr")
  classes = [int(c) for c in options.classes] if options.classes else None
  outdir = runtime.path(options.outdir)
  cond = batches.parse_cond(options.cond, config.model.cond_dim)
  shard_size, num_samples, seed = options.shard_size, options.num_samples, options.seed
  settings = {"config": json.loads(config.to_json()), "step": meta["step"],
              "weights": meta["weights"], "method": method, "tol": options.tol,
              "seed": seed, "shard_size": shard_size, "classes": classes,
              "cond": None if cond is None else cond.tolist(),
              "denoise_std": denoise_std, "denoise_lr": denoise_lr if denoise_std else None,
              "fid_protocol": options.fid_protocol, **guidance}
  record = check_outdir(outdir, settings)

  num_shards = -(-num_samples // shard_size)
  batch = batches.padded_size(shard_size, mesh)  # Every shard, the last too: one compile.
  method_options = {"method": method, "tol": options.tol}
  if method == "auto":
    method_options = calibrated_plan(model, outdir, record, batch, guidance, seed=seed,
                                     tol=options.tol)
  # Process 0 decides which shards are missing, so that all hosts run the same batches.
  missing = np.array([not shard_path(outdir, i).exists() for i in range(num_shards)])
  if jax.process_count() > 1:
    missing = multihost_utils.broadcast_one_to_all(missing)
  todo = [i for i in range(num_shards) if missing[i]]
  logging.info("%d of %d shards to write (global batch %d over %d devices, %d processes)",
               len(todo), num_shards, batch, jax.device_count(), jax.process_count())
  total = sum(min(shard_size, num_samples - i * shard_size) for i in todo)
  start_time, done = time.time(), 0
  with runtime.StopSignal() as stop:
    for position, index in enumerate(todo):
      if stop.should_stop(position):
        raise runtime.Interrupted(f"stopped with {len(todo) - position} shards left in "
                                  f"{outdir}; rerun the same command to finish")
      start = index * shard_size
      count = min(shard_size, num_samples - start)
      images, labels, info = batches.generate(
          model, mesh, seed=seed, start=start, count=count, batch=batch, classes=classes,
          cond=cond, denoise_std=denoise_std, denoise_lr=denoise_lr, **method_options,
          **guidance)
      if position == 0:
        logging.info("process %d computed %d of the %d rows of each batch", jax.process_index(),
                     info["local_rows"], batch)
      if jax.process_index() == 0:
        record_redrawn(outdir, index, info["redrawn"])
        write_shard(outdir, index, fid_protocols.to_uint8(images, options.fid_protocol), labels,
                    grid_columns=config.model.num_classes or None)
      done += count
      if jax.process_index() == 0:
        print(f"\r{progress_bar(done, total)}  shard {index + 1}/{num_shards}  "
              f"{done / (time.time() - start_time):.2f} img/s", end="", flush=True)
  multihost_utils.sync_global_devices("shards written")
  if options.trace:  # Every process computes it (the model is sharded); process 0 writes it.
    trace = sample_trace(model, mesh, seed=seed, count=min(num_samples, TRACE_SAMPLES),
                         classes=classes, cond=cond, denoise_std=denoise_std,
                         denoise_lr=denoise_lr, **guidance)
    if jax.process_index() == 0:
      visualize.save_png(outdir / "trace.png", visualize.trace_grid(visualize.to_uint8(
          visualize.finite_samples(trace, "sampling trace"))))
  if jax.process_index() == 0:
    print(f"\nwrote {num_samples} samples in {num_shards} shards to {outdir} "
          f"(sampling.json, grid.png{', trace.png' if options.trace else ''}); "
          f"{redrawn_total(outdir)} non-finite samples were drawn again", flush=True)
  return num_shards


def _define_flags():
  """The CLI's flags → a function that reads them into (root, Options, config)."""
  config = job_flags.define_config()
  checkpoint = job_flags.define_checkpoint()
  sampler = job_flags.define_sampler()
  seed = job_flags.define_seed("Noise seed.")
  fid_protocol = job_flags.define_fid_protocol()
  flags.adopt_module_key_flags(job_flags)  # --help lists the shared flags too.
  num = flags.DEFINE_integer("num_samples", 64, "Total number of samples.")
  outdir = flags.DEFINE_string("outdir", None, "Where shards go.", required=True)
  shard = flags.DEFINE_integer("shard_size", 64, "Samples per shard (one global batch).")
  classes = flags.DEFINE_list("classes", None, "Class labels to cycle (default: all, balanced).")
  cond = flags.DEFINE_list(
      "cond", None, "AdaLN models (model.cond_dim > 0): continuous condition values, cond_dim "
      "per vector, vectors cycled over the samples like --classes (default: unconditional).")
  trace = flags.DEFINE_bool(
      "trace", False, f"Also write OUT/trace.png: for the first (up to {TRACE_SAMPLES}) samples, "
      "the image after each block from the noise to the sample (and the denoised one), through "
      "the exact sequential inverse, one row each.")

  def read():
    options = Options(outdir=outdir.value, num_samples=num.value, shard_size=shard.value,
                      classes=classes.value, cond=cond.value, step=checkpoint.step.value,
                      use_ema=checkpoint.use_ema.value, seed=seed.value,
                      fid_protocol=fid_protocol.value, trace=trace.value, **sampler.values())
    return checkpoint.root(), options, config.value

  return read


if __name__ == "__main__":
  _read_flags = _define_flags()
  runtime.run(lambda: run_job(*_read_flags()))
