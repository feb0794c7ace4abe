"""Evaluation job: exact bits/dim or Bayes-classifier accuracy over a TFDS split, FID of samples.

  python -m tarflow_flax.evaluate --config=configs/imagenet64.py:likelihood \
      --workdir=gs://BUCKET/in64 --metric=bpd --split=validation --num_dequant=4
  python -m tarflow_flax.evaluate --checkpoint=/ckpt/afhq --metric=bpd   # config from the checkpoint
  python -m tarflow_flax.evaluate --workdir=/tmp/tarflow_default --metric=classify \
      --num_noise_draws=8
  python -m tarflow_flax.evaluate --metric=fid --samples=DIR --ref_stats=imagenet_64_fid_stats.pth \
      --inception_pth=imagenet_64_fid_stats.pth --fid_protocol=reference

Bits/dim protocol (the paper's, docs/numerics.md §10): uniform dequantization
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
_METRIC = flags.DEFINE_enum("metric", "bpd", ["bpd", "classify", "fid", "fid_stats"],
                            "bpd: bits/dim of a checkpoint; classify: Bayes-classifier accuracy "
                            "of a conditional checkpoint; fid: FID of --samples against "
                            "--ref_stats; fid_stats: write reference statistics of the config's "
                            "data split to --out (.pth: the reference's format, else .npz).")
_SAMPLES = flags.DEFINE_string("samples", None, "Sampling job outdir (shard_*.npz), for fid.")
_REF_STATS = flags.DEFINE_string("ref_stats", None,
                                 "Reference statistics, for fid: the reference's *_fid_stats.pth, "
                                 "a pytorch-fid/ADM .npz (mu, sigma) or this project's .npz.")
_INCEPTION = flags.DEFINE_string("inception_pth", None,
                                 "FID Inception weights: a .pth (e.g. pt_inception-2015-12-05), an "
                                 ".npz of the same keys, or a reference *_fid_stats.pth.")
_FID_PROTOCOL = flags.DEFINE_enum("fid_protocol", "reference", ["reference", "pytorch_fid"],
                                  "reference: ml-tarflow's torchmetrics/torch-fidelity FID "
                                  "(comparable with the paper); pytorch_fid: pytorch-fid's.")
_SPLIT = flags.DEFINE_string("split", None, "TFDS split (default: config.data.eval_split).")
_NUM_DEQUANT = flags.DEFINE_integer("num_dequant", 1, "Dequantization draws per image (bpd).")
_NUM_NOISE_DRAWS = flags.DEFINE_integer(
    "num_noise_draws", None, "Noise draws per image, class losses averaged (classify; default: "
    "config.classify_noise_draws).", lower_bound=1)
_NUM_BATCHES = flags.DEFINE_integer("num_batches", -1, "Limit batches (-1: the whole split).")
_USE_EMA = flags.DEFINE_bool("use_ema", True, "Evaluate the EMA weights when present.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the dequantization or classification noise.")
_OUT = flags.DEFINE_string("out", None, "Also write the result as JSON here.")


def _progress(stop, metric: str, batch_size: int, draws: int = 1):
  """The per-batch callback of an evaluation: a stop every process agrees on, and a progress line
  after the first batch (which compiles), then every 10 batches or 30 s."""
  start = last_log = time.time()
  calls = 0

  def progress(draw, index):
    nonlocal calls, last_log
    if stop.should_stop(calls):  # Every process calls this once per batch, in the same order.
      raise runtime.Interrupted(f"stopped at draw {draw}, batch {index}; nothing was written")
    calls += 1
    now = time.time()
    if index == 0 or index % 10 == 9 or now - last_log > 30:
      images = (index + 1) * batch_size
      pass_text = f"draw {draw + 1}/{draws}, " if draws > 1 else ""
      logging.info("%s: %sbatch %d, %d images, %.0f s", metric, pass_text, index + 1, images,
                   now - start)
      last_log = now

  return progress


def run_bpd(config, root) -> dict:
  model, config, mesh, meta = runtime.restore_model(root, config, step=_STEP.value,
                                                    use_ema=_USE_EMA.value)
  graphdef, state = nnx.split(model)
  with runtime.StopSignal() as stop:
    result = eval_lib.evaluate_bpd(
        graphdef, state, config, mesh, split=_SPLIT.value, num_batches=_NUM_BATCHES.value,
        num_dequant=_NUM_DEQUANT.value, seed=_SEED.value,
        progress=_progress(stop, "bpd", config.batch_size, _NUM_DEQUANT.value))
  return {**result, "metric": "bpd", "step": meta["step"], "weights": meta["weights"],
          "dataset": config.data.name, "split": _SPLIT.value or config.data.eval_split,
          "protocol": "uniform dequantization ((x_int+u)/256)*2-1, y=None, D=C*H*W, "
                      "log(128) per dim"}


def run_classify(config, root) -> dict:
  """Bayes-classifier accuracy (argmin over classes of the training loss) on the eval split."""
  model, config, mesh, meta = runtime.restore_model(root, config, step=_STEP.value,
                                                    use_ema=_USE_EMA.value)
  graphdef, state = nnx.split(model)
  if _NUM_NOISE_DRAWS.value is not None:
    config.classify_noise_draws = _NUM_NOISE_DRAWS.value
  with runtime.StopSignal() as stop:
    result = eval_lib.evaluate_accuracy(
        graphdef, state, config, mesh, split=_SPLIT.value, num_batches=_NUM_BATCHES.value,
        seed=_SEED.value, progress=_progress(stop, "classify", config.batch_size))
  return {**result, "metric": "classify", "step": meta["step"], "weights": meta["weights"],
          "dataset": config.data.name, "split": _SPLIT.value or config.data.eval_split}


def _extractor(batch_size: int = 64):
  from tarflow_flax import fid  # pylint: disable=g-import-not-at-top
  if not _INCEPTION.value:
    raise ValueError("--inception_pth is required for FID (the FID Inception weights as a "
                     "PyTorch .pth or a reference *_fid_stats.pth; nothing is downloaded)")
  weights = fid.read_state_dict(_INCEPTION.value)
  model = fid.load_torch_weights(fid.InceptionV3(), weights)
  return fid, fid.FeatureExtractor(model, batch_size, protocol=_FID_PROTOCOL.value), weights


def run_fid() -> dict:
  """FID of a samples directory against reference statistics; prints the protocol."""
  if not (_SAMPLES.value and _REF_STATS.value):
    raise ValueError("--metric=fid needs --samples=DIR and --ref_stats=FILE")
  fid, extractor, _ = _extractor()
  reference = fid.load_statistics(_REF_STATS.value)
  settings = fid.sampling_settings(_SAMPLES.value)
  if settings.get("fid_protocol", extractor.protocol) != extractor.protocol:
    raise ValueError(f"{_SAMPLES.value} stores uint8 samples made under the "
                     f"{settings['fid_protocol']!r} FID protocol; pass "
                     f"--fid_protocol={settings['fid_protocol']}")
  value, mine = fid.fid_against(extractor, fid.sample_shards(_SAMPLES.value), reference)
  return {"metric": "fid", "fid": value, "fid_protocol": extractor.protocol,
          "num_samples": mine.num_images,
          "reference": {"path": _REF_STATS.value, "num_images": reference.num_images,
                        "source": reference.source, "fid_protocol": reference.protocol},
          "sampling": {**{k: settings.get(k) for k in ("method", "guidance", "guide_what",
                                                       "attn_temp", "annealed_guidance",
                                                       "denoise_std", "denoise_lr", "step",
                                                       "weights")},
                       # Samples drawn again because the first draw came out non-finite.
                       "redrawn": sum(settings.get("redrawn", {}).values())}}


def run_fid_stats(config) -> dict:
  """Reference statistics of the config's data split (every image once) → --out."""
  from tarflow_flax import input_pipeline  # pylint: disable=g-import-not-at-top
  if config is None or not _OUT.value:
    raise ValueError("--metric=fid_stats needs --config and --out=FILE (.pth or .npz)")
  fid, extractor, weights = _extractor()
  split = _SPLIT.value or config.data.train_split

  def images():
    for index, batch in enumerate(input_pipeline.create_eval_iterator(
        config, split=split, process_index=0, process_count=1)):
      if 0 <= _NUM_BATCHES.value <= index:
        return
      yield fid.dataset_uint8(batch["image_uint8"][batch["mask"]], extractor.protocol)

  stats = extractor.statistics(images(), source=f"{config.data.name}:{split}:"
                                                f"{config.image_size}px")
  if jax.process_index() == 0:  # Every process computed the same statistics.
    fid.save_statistics(_OUT.value, stats, inception_state=weights)
  return {"metric": "fid_stats", "num_images": stats.num_images, "source": stats.source,
          "fid_protocol": stats.protocol, "out": _OUT.value}


def main() -> None:
  config = _CONFIG.value
  if config is not None:
    config_lib.validate(config)
  if _METRIC.value == "fid":
    result = run_fid()
  elif _METRIC.value == "fid_stats":
    result = run_fid_stats(config)
  elif _METRIC.value == "classify":
    result = run_classify(config, runtime.checkpoint_root(_WORKDIR.value, _CHECKPOINT.value))
  else:
    result = run_bpd(config, runtime.checkpoint_root(_WORKDIR.value, _CHECKPOINT.value))
  if jax.process_index() == 0:
    print(json.dumps(result, indent=2))
    if _OUT.value and _METRIC.value != "fid_stats":
      runtime.path(_OUT.value).write_text(json.dumps(result, indent=2))
    headline = {k: result[k] for k in ("bpd", "bpd_stderr", "accuracy", "noise_draws", "fid",
                                       "num_images", "out") if k in result}
    print(f"done: {_METRIC.value} {json.dumps(headline)}"
          + (f", written to {_OUT.value}" if _OUT.value else ""), flush=True)


if __name__ == "__main__":
  runtime.run(main)
