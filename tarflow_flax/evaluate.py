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

As a library: `bpd(root, ...)`, `classify(root, ...)`, `fid(samples, ...)`, `fid_stats(config,
...)`, each returning the result dict the CLI prints.
"""

from __future__ import annotations

import json
import time

import jax
from absl import flags, logging
from flax import nnx

from tarflow_flax import checkpoint, config_lib, eval_lib, job_flags, runtime
from tarflow_flax import fid as fid_lib
from tarflow_flax.fid import protocols as fid_protocols

METRICS = ("bpd", "classify", "fid", "fid_stats")


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


def bpd(root, config=None, *, step: int | None = None, use_ema: bool = True,
        split: str | None = None, num_dequant: int = 1, num_batches: int = -1,
        seed: int = 0) -> dict:
  """Bits/dim of the checkpoint at `root` over a split (default: config.data.eval_split)."""
  model, config, mesh, meta = checkpoint.load_model(root, config, step=step, use_ema=use_ema,
                                                    mesh=runtime.make_mesh)
  graphdef, state = nnx.split(model)
  with runtime.StopSignal() as stop:
    result = eval_lib.evaluate_bpd(
        graphdef, state, config, mesh, split=split, num_batches=num_batches,
        num_dequant=num_dequant, seed=seed,
        progress=_progress(stop, "bpd", config.batch_size, num_dequant))
  return {**result, "metric": "bpd", "step": meta["step"], "weights": meta["weights"],
          "dataset": config.data.name, "split": split or config.data.eval_split,
          "protocol": "uniform dequantization ((x_int+u)/256)*2-1, y=None, D=C*H*W, "
                      "log(128) per dim"}


def classify(root, config=None, *, step: int | None = None, use_ema: bool = True,
             split: str | None = None, num_noise_draws: int | None = None,
             num_batches: int = -1, seed: int = 0) -> dict:
  """Bayes-classifier accuracy (argmin over classes of the training loss) on the eval split;
  num_noise_draws defaults to config.classify_noise_draws."""
  model, config, mesh, meta = checkpoint.load_model(root, config, step=step, use_ema=use_ema,
                                                    mesh=runtime.make_mesh)
  graphdef, state = nnx.split(model)
  if num_noise_draws is not None:
    config.classify_noise_draws = num_noise_draws
  with runtime.StopSignal() as stop:
    result = eval_lib.evaluate_accuracy(
        graphdef, state, config, mesh, split=split, num_batches=num_batches,
        seed=seed, progress=_progress(stop, "classify", config.batch_size))
  return {**result, "metric": "classify", "step": meta["step"], "weights": meta["weights"],
          "dataset": config.data.name, "split": split or config.data.eval_split}


def _extractor(inception_pth: str | None, protocol: str, batch_size: int = 64):
  if not inception_pth:
    raise ValueError("--inception_pth is required for FID (the FID Inception weights as a "
                     "PyTorch .pth or a reference *_fid_stats.pth; nothing is downloaded)")
  weights = fid_lib.read_state_dict(inception_pth)
  model = fid_lib.load_torch_weights(fid_lib.InceptionV3(), weights)
  return fid_lib.FeatureExtractor(model, batch_size, protocol=protocol), weights


def fid(samples: str | None, ref_stats: str | None, *, inception_pth: str | None,
        protocol: str = fid_protocols.DEFAULT_PROTOCOL, batch_size: int = 64) -> dict:
  """FID of a sampling job's outdir against reference statistics; the result names the protocol
  and the sampler settings of the samples. batch_size: images per Inception call (a shorter
  batch is padded to it)."""
  if not (samples and ref_stats):
    raise ValueError("--metric=fid needs --samples=DIR and --ref_stats=FILE")
  extractor, _ = _extractor(inception_pth, protocol, batch_size)
  reference = fid_lib.load_statistics(ref_stats)
  settings = fid_lib.sampling_settings(samples)
  if settings.get("fid_protocol", extractor.protocol) != extractor.protocol:
    raise ValueError(f"{samples} stores uint8 samples made under the "
                     f"{settings['fid_protocol']!r} FID protocol; pass "
                     f"--fid_protocol={settings['fid_protocol']}")
  value, mine = fid_lib.fid_against(extractor, fid_lib.sample_shards(samples), reference)
  return {"metric": "fid", "fid": value, "fid_protocol": extractor.protocol,
          "num_samples": mine.num_images,
          "reference": {"path": ref_stats, "num_images": reference.num_images,
                        "source": reference.source, "fid_protocol": reference.protocol},
          "sampling": {**{k: settings.get(k) for k in ("method", "guidance", "guide_what",
                                                       "attn_temp", "annealed_guidance",
                                                       "denoise_std", "denoise_lr", "step",
                                                       "weights")},
                       # Samples drawn again because the first draw came out non-finite.
                       "redrawn": sum(settings.get("redrawn", {}).values())}}


def fid_stats(config, out: str | None, *, inception_pth: str | None,
              protocol: str = fid_protocols.DEFAULT_PROTOCOL, split: str | None = None,
              num_batches: int = -1) -> dict:
  """Reference statistics of the config's data split (default: the train split; every image
  once) → `out` (.pth: the reference's format, else .npz)."""
  from tarflow_flax import input_pipeline  # pylint: disable=g-import-not-at-top
  if config is None or not out:
    raise ValueError("--metric=fid_stats needs --config and --out=FILE (.pth or .npz)")
  extractor, weights = _extractor(inception_pth, protocol)
  split = split or config.data.train_split

  def images():
    for index, batch in enumerate(input_pipeline.create_eval_iterator(
        config, split=split, process_index=0, process_count=1)):
      if 0 <= num_batches <= index:
        return
      yield fid_lib.dataset_uint8(batch["image_uint8"][batch["mask"]], extractor.protocol)

  stats = extractor.statistics(images(), source=f"{config.data.name}:{split}:"
                                                f"{config.image_size}px")
  if jax.process_index() == 0:  # Every process computed the same statistics.
    fid_lib.save_statistics(out, stats, inception_state=weights)
  return {"metric": "fid_stats", "num_images": stats.num_images, "source": stats.source,
          "fid_protocol": stats.protocol, "out": out}


def report(metric: str, result: dict, out: str | None) -> None:
  """Process 0 prints the result as JSON, writes it to `out` (fid_stats wrote its own file) and
  ends with one `done:` line holding the headline numbers."""
  if jax.process_index() != 0:
    return
  print(json.dumps(result, indent=2))
  if out and metric != "fid_stats":
    runtime.path(out).write_text(json.dumps(result, indent=2))
  headline = {k: result[k] for k in ("bpd", "bpd_stderr", "accuracy", "noise_draws", "fid",
                                     "num_images", "out") if k in result}
  print(f"done: {metric} {json.dumps(headline)}" + (f", written to {out}" if out else ""),
        flush=True)


def _define_flags():
  """The CLI's flags → the job: runs the metric they name and reports it."""
  config = job_flags.define_config()
  checkpoint = job_flags.define_checkpoint()
  seed = job_flags.define_seed("Seed of the dequantization or classification noise.")
  protocol = job_flags.define_fid_protocol()
  flags.adopt_module_key_flags(job_flags)  # --help lists the shared flags too.
  metric = flags.DEFINE_enum("metric", "bpd", list(METRICS),
                             "bpd: bits/dim of a checkpoint; classify: Bayes-classifier accuracy "
                             "of a conditional checkpoint; fid: FID of --samples against "
                             "--ref_stats; fid_stats: write reference statistics of the config's "
                             "data split to --out (.pth: the reference's format, else .npz).")
  samples = flags.DEFINE_string("samples", None, "Sampling job outdir (shard_*.npz), for fid.")
  ref_stats = flags.DEFINE_string(
      "ref_stats", None, "Reference statistics, for fid: the reference's *_fid_stats.pth, a "
      "pytorch-fid/ADM .npz (mu, sigma) or this project's .npz.")
  inception = flags.DEFINE_string(
      "inception_pth", None, "FID Inception weights: a .pth (e.g. pt_inception-2015-12-05), an "
      ".npz of the same keys, or a reference *_fid_stats.pth.")
  split = flags.DEFINE_string("split", None, "TFDS split (default: config.data.eval_split).")
  num_dequant = flags.DEFINE_integer("num_dequant", 1,
                                     "Dequantization draws per image (bpd).")
  num_noise_draws = flags.DEFINE_integer(
      "num_noise_draws", None, "Noise draws per image, class losses averaged (classify; "
      "default: config.classify_noise_draws).", lower_bound=1)
  num_batches = flags.DEFINE_integer("num_batches", -1, "Limit batches (-1: the whole split).")
  out = flags.DEFINE_string("out", None, "Also write the result as JSON here.")

  def job():
    if config.value is not None:
      config_lib.validate(config.value)
    if metric.value == "fid":
      result = fid(samples.value, ref_stats.value, inception_pth=inception.value,
                   protocol=protocol.value)
    elif metric.value == "fid_stats":
      result = fid_stats(config.value, out.value, inception_pth=inception.value,
                         protocol=protocol.value, split=split.value,
                         num_batches=num_batches.value)
    else:
      common = dict(step=checkpoint.step.value, use_ema=checkpoint.use_ema.value,
                    split=split.value, num_batches=num_batches.value, seed=seed.value)
      if metric.value == "classify":
        result = classify(checkpoint.root(), config.value,
                          num_noise_draws=num_noise_draws.value, **common)
      else:
        result = bpd(checkpoint.root(), config.value, num_dequant=num_dequant.value, **common)
    report(metric.value, result, out.value)

  return job


if __name__ == "__main__":
  runtime.run(_define_flags())
