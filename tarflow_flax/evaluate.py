"""Evaluation job: exact bits/dim over a TFDS split (and FID of a samples directory).

  python -m tarflow_flax.evaluate --config=configs/imagenet64.py:likelihood \
      --workdir=gs://BUCKET/in64 --metric=bpd --split=validation --num_dequant=4
  python -m tarflow_flax.evaluate --checkpoint=/ckpt/afhq --metric=bpd   # config from the checkpoint

Bits/dim protocol (the paper's, SEMANTICS.md §10): uniform dequantization
x = ((x_int + u)/256)·2 − 1, u ~ U[0, 1), forward with y = None, D = C·H·W, standard-normal prior,
log 128 per dimension for the bin width 2/256; K draws of u per image; every image of the split
exactly once (padded last batch, masked). The trainer's validation calls the same function.
"""

from __future__ import annotations

import json
import time

import jax
from absl import flags, logging
from flax import nnx
from ml_collections import config_flags

from tarflow_flax import config_lib, eval_lib, runtime

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config (default: the checkpoint's).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (reads workdir/checkpoints).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A checkpoint root (e.g. from convert).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_METRIC = flags.DEFINE_enum("metric", "bpd", ["bpd", "fid", "fid_stats"],
                            "bpd: bits/dim of a checkpoint; fid: FID of --samples against "
                            "--ref_stats; fid_stats: write reference statistics of the config's "
                            "data split to --out.")
_SAMPLES = flags.DEFINE_string("samples", None, "Sampling job outdir (shard_*.npz), for fid.")
_REF_STATS = flags.DEFINE_string("ref_stats", None, "Reference statistics .npz, for fid.")
_INCEPTION = flags.DEFINE_string("inception_pth", None,
                                 "FID Inception weights (.pth, e.g. pt_inception-2015-12-05).")
_SPLIT = flags.DEFINE_string("split", None, "TFDS split (default: config.data.eval_split).")
_NUM_DEQUANT = flags.DEFINE_integer("num_dequant", 1, "Dequantization draws per image (bpd).")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", -1, "Limit batches (-1: the whole split).")
_USE_EMA = flags.DEFINE_bool("use_ema", True, "Evaluate the EMA weights when present.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the dequantization noise.")
_OUT = flags.DEFINE_string("out", None, "Also write the result as JSON here.")


def run_bpd(config, root) -> dict:
  model, config, mesh, meta = runtime.restore_model(root, config, step=_STEP.value,
                                                    use_ema=_USE_EMA.value)
  graphdef, state = nnx.split(model)
  start, calls = time.time(), 0

  def progress(draw, index):
    nonlocal calls
    if stop.should_stop(calls):  # Every process calls this once per batch, in the same order.
      raise runtime.Interrupted(f"stopped at draw {draw}, batch {index}; nothing was written")
    calls += 1
    if index % 10 == 0:
      logging.info("draw %d batch %d (%.1f s)", draw, index, time.time() - start)

  with runtime.StopSignal() as stop:
    result = eval_lib.evaluate_bpd(graphdef, state, config, mesh, split=_SPLIT.value,
                                   num_batches=_NUM_BATCHES.value,
                                   num_dequant=_NUM_DEQUANT.value, seed=_SEED.value,
                                   progress=progress)
  return {**result, "metric": "bpd", "step": meta["step"], "weights": meta["weights"],
          "dataset": config.data.name, "split": _SPLIT.value or config.data.eval_split,
          "protocol": "uniform dequantization ((x_int+u)/256)*2-1, y=None, D=C*H*W, "
                      "log(128) per dim"}


def _extractor():
  from tarflow_flax import fid  # pylint: disable=g-import-not-at-top
  if not _INCEPTION.value:
    raise ValueError("--inception_pth is required for FID (the standard FID Inception weights "
                     "as a PyTorch .pth; nothing is downloaded)")
  return fid, fid.FeatureExtractor(fid.from_pth(_INCEPTION.value))


def run_fid() -> dict:
  """FID of a samples directory against reference statistics; prints the protocol."""
  if not (_SAMPLES.value and _REF_STATS.value):
    raise ValueError("--metric=fid needs --samples=DIR and --ref_stats=FILE.npz")
  fid, extractor = _extractor()
  mu_ref, sigma_ref, ref_meta = fid.load_statistics(_REF_STATS.value)
  mu, sigma, count = extractor.statistics(fid.sample_shards(_SAMPLES.value))
  settings = fid.fid.sampling_settings(_SAMPLES.value)
  return {"metric": "fid", "fid": fid.frechet_distance(mu, sigma, mu_ref, sigma_ref),
          "num_samples": count, "reference": {**ref_meta, "path": _REF_STATS.value},
          "protocol": {"samples_clipped_to": "[-1, 1] then uint8",
                       "inception": "FID Inception-v3 pool3 (2048-d), bilinear resize to 299",
                       **{k: settings.get(k) for k in ("method", "guidance", "guide_what",
                                                       "attn_temp", "annealed_guidance",
                                                       "denoise_std", "step", "weights")}}}


def run_fid_stats(config) -> dict:
  """Reference statistics of the config's data split (every image once) → --out .npz."""
  from tarflow_flax import input_pipeline  # pylint: disable=g-import-not-at-top
  if config is None or not _OUT.value:
    raise ValueError("--metric=fid_stats needs --config and --out=FILE.npz")
  fid, extractor = _extractor()
  split = _SPLIT.value or config.data.train_split

  def images():
    for batch in input_pipeline.create_eval_iterator(config, split=split, process_index=0,
                                                     process_count=1):
      yield batch["image_uint8"][batch["mask"]]

  mu, sigma, count = extractor.statistics(images())
  source = f"{config.data.name}:{split}:{config.image_size}px"
  fid.save_statistics(_OUT.value, mu, sigma, num_images=count, source=source)
  return {"metric": "fid_stats", "num_images": count, "source": source, "out": _OUT.value}


def main() -> None:
  config = _CONFIG.value
  if config is not None:
    config_lib.validate(config)
  if _METRIC.value == "fid":
    result = run_fid()
  elif _METRIC.value == "fid_stats":
    result = run_fid_stats(config)
  else:
    result = run_bpd(config, runtime.checkpoint_root(_WORKDIR.value, _CHECKPOINT.value))
  if jax.process_index() == 0:
    print(json.dumps(result, indent=2))
    if _OUT.value and _METRIC.value != "fid_stats":
      runtime.path(_OUT.value).write_text(json.dumps(result, indent=2))
    headline = {k: result[k] for k in ("bpd", "bpd_stderr", "fid", "num_images", "out")
                if k in result}
    print(f"done: {_METRIC.value} {json.dumps(headline)}"
          + (f", written to {_OUT.value}" if _OUT.value else ""), flush=True)


if __name__ == "__main__":
  runtime.run(main)
