"""Guidance sweep: FID of every combination of sampler settings, then a table and a plot.

  python -m tarflow_flax.sweep --workdir=DIR --guidance=0,1,2 --num_samples=10000
      --ref_stats=S --inception_pth=I --outdir=O [--attn_temp=0.9,1] [--denoise_lr=0.5,1]

Each point is sampled as the sample job samples (sample.run_job: sharded over every device and
host, class-balanced, resumable) into O/<point>/, then its FID against S is kept in
O/<point>/fid.json. A point with that file is reused; a point whose shards are partly written
resumes from them: a killed sweep, run again, finishes where it stopped. At the end O/sweep.json
holds [{guidance, attn_temp, denoise_lr, fid, num_samples, method}] and O/sweep.png draws FID
against guidance, one line per other setting, the best point marked. Exit status 75: stopped by a
signal while sampling (after the current shard; rerun to finish).

With several hosts OUT must be shared by all (gs://), as for the sample job. As a library:
`run_sweep(root, Options(...), config=None)`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Sequence

import jax
import numpy as np
from absl import flags, logging
from jax.experimental import multihost_utils

from tarflow_flax import evaluate, job_flags, runtime, sample
from tarflow_flax.fid import protocols as fid_protocols

METHOD = "sequential"  # The exact inverse: FIDs differ by the swept settings only.


@dataclasses.dataclass(frozen=True)
class Options:
  """A sweep; attn_temp / denoise_lr values None mean config.sample's."""
  outdir: str
  guidance: Sequence[float]
  num_samples: int
  ref_stats: str
  inception_pth: str | None = None
  attn_temp: Sequence[float | None] = (None,)
  denoise_lr: Sequence[float | None] = (None,)
  fid_protocol: str = fid_protocols.DEFAULT_PROTOCOL
  shard_size: int = 64
  seed: int = 0
  step: int | None = None
  use_ema: bool = True

  def __post_init__(self):
    if not self.guidance:
      raise runtime.UserError("--guidance: give at least one value")


def point_name(guidance, attn_temp, denoise_lr) -> str:
  """The folder of one point: its settings, 'config' for those left to the config."""
  def text(value):
    return "config" if value is None else f"{value:g}"
  return f"guidance={text(guidance)}_attn_temp={text(attn_temp)}_denoise_lr={text(denoise_lr)}"


def _reusable(path, options: Options) -> dict | None:
  """The stored FID of a point, if it was measured against the same reference, same way."""
  if not path.exists():
    return None
  stored = json.loads(path.read_text())
  same = (stored["reference"]["path"] == options.ref_stats
          and stored["fid_protocol"] == options.fid_protocol)
  return stored if same else None


def _row(fid_result: dict) -> dict:
  s = fid_result["sampling"]
  return {"guidance": s["guidance"], "attn_temp": s["attn_temp"], "denoise_lr": s["denoise_lr"],
          "fid": fid_result["fid"], "num_samples": fid_result["num_samples"],
          "method": s["method"]}


def run_sweep(root, options: Options, config=None) -> list[dict]:
  """Samples and scores every point not done yet; writes sweep.json and sweep.png (process 0);
  returns the rows of sweep.json."""
  outdir = runtime.path(options.outdir)
  grid = list(itertools.product(options.guidance, options.attn_temp, options.denoise_lr))
  rows = []
  for position, (guidance, attn_temp, denoise_lr) in enumerate(grid):
    folder = outdir / point_name(guidance, attn_temp, denoise_lr)
    result_path = folder / "fid.json"
    stored = _reusable(result_path, options)
    done = np.array(stored is not None)
    if jax.process_count() > 1:  # Process 0 decides, so that every host runs the same jobs.
      done = multihost_utils.broadcast_one_to_all(done)
    if done:
      result = stored if stored is not None else json.loads(result_path.read_text())
      logging.info("point %d/%d %s: FID %.3f (reused)", position + 1, len(grid), folder.name,
                   result["fid"])
    else:
      sample.run_job(root, sample.Options(
          outdir=str(folder), num_samples=options.num_samples, shard_size=options.shard_size,
          method=METHOD, guidance=guidance, attn_temp=attn_temp, denoise_lr=denoise_lr,
          step=options.step, use_ema=options.use_ema, seed=options.seed,
          fid_protocol=options.fid_protocol), config)
      result = evaluate.fid(str(folder), options.ref_stats, inception_pth=options.inception_pth,
                            protocol=options.fid_protocol,
                            batch_size=min(64, options.num_samples))
      if jax.process_index() == 0:
        result_path.write_text(json.dumps(result, indent=2))
        print(f"point {position + 1}/{len(grid)} {folder.name}: FID {result['fid']:.3f}",
              flush=True)
    rows.append(_row(result))
  if jax.process_index() == 0:
    (outdir / "sweep.json").write_text(json.dumps(rows, indent=2))
    from tarflow_flax import sweep_plot  # pylint: disable=g-import-not-at-top
    sweep_plot.save(rows, outdir / "sweep.png")
    best = min(rows, key=lambda r: r["fid"])
    print(f"done: {len(rows)} points in {outdir / 'sweep.json'} and sweep.png; best FID "
          f"{best['fid']:.3f} at guidance {best['guidance']:g}, attn_temp "
          f"{best['attn_temp']:g}, denoise_lr {best['denoise_lr']}", flush=True)
  return rows


def _floats(values):
  try:
    return tuple(float(v) for v in values)
  except ValueError as e:
    raise runtime.UserError(f"not a number in {values}: {e}") from e


def _define_flags():
  """The CLI's flags → a function that reads them into (root, Options, config)."""
  config = job_flags.define_config()
  checkpoint = job_flags.define_checkpoint()
  seed = job_flags.define_seed("Noise seed (every point uses the same latents).")
  fid_protocol = job_flags.define_fid_protocol()
  flags.adopt_module_key_flags(job_flags)
  guidance = flags.DEFINE_list("guidance", None, "Guidance weights to sweep, e.g. 0,0.5,1,2.",
                               required=True)
  attn_temp = flags.DEFINE_list("attn_temp", None, "Attention temperatures to sweep (default: "
                                "config.sample.attn_temp).")
  denoise_lr = flags.DEFINE_list("denoise_lr", None, "Denoising steps to sweep (default: "
                                 "config.sample.denoise_lr).")
  num = flags.DEFINE_integer("num_samples", None, "Samples per point.", required=True)
  shard = flags.DEFINE_integer("shard_size", 64, "Samples per shard (one global batch).")
  ref_stats = flags.DEFINE_string("ref_stats", None, "Reference FID statistics (as evaluate's).",
                                  required=True)
  inception = flags.DEFINE_string("inception_pth", None, "FID Inception weights (as evaluate's).")
  outdir = flags.DEFINE_string("outdir", None, "Points, sweep.json, sweep.png.", required=True)

  def read():
    options = Options(
        outdir=outdir.value, guidance=_floats(guidance.value), num_samples=num.value,
        ref_stats=ref_stats.value, inception_pth=inception.value,
        attn_temp=_floats(attn_temp.value) if attn_temp.value else (None,),
        denoise_lr=_floats(denoise_lr.value) if denoise_lr.value else (None,),
        fid_protocol=fid_protocol.value, shard_size=shard.value, seed=seed.value,
        step=checkpoint.step.value, use_ema=checkpoint.use_ema.value)
    return checkpoint.root(), options, config.value

  return read


if __name__ == "__main__":
  _read_flags = _define_flags()
  runtime.run(lambda: run_sweep(*_read_flags()))
