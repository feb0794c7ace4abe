"""The training loop: sharded steps, CLU metrics, Orbax checkpoints with automatic resume.

`train_and_evaluate(config, workdir)` is the whole job; `main.py` only parses flags. Every process
of a multi-host job runs it; process 0 writes metrics; Orbax coordinates checkpoint writes.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from flax import nnx

from tarflow_flax import checkpoint, config_lib, eval_lib, flops, optim, progress, runtime
from tarflow_flax import sharding, steps
from tarflow_flax import input_pipeline as data_lib
from tarflow_flax import visualize
from tarflow_flax.sampling import batches as sample_batches
from tarflow_flax.sampling import settings as sample_settings
from tarflow_flax.sampling.trace import sample_trace

FID_SEED = 1000  # In-training FID samples; the TensorBoard grid uses seed 0.


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/inf loss or gradient; the last good checkpoint is kept."""


def init_train_state(trainer: steps.Trainer, mesh, shardings) -> steps.TrainState:
  """The trainer's fresh state: seed initialisation, then `config.init_from`'s weights if set
  (fine-tuning: new optimizer state, data from the start, step 0)."""
  state = steps.init_train_state(trainer, mesh, shardings)
  if trainer.config.init_from:
    model, ema = checkpoint.load_init_weights(
        trainer.config.init_from, state.model, state.ema,
        neutral_when_absent=trainer.family.neutral_when_absent)
    state = state.replace(model=model, ema=ema)
  return state


def train_scalars(means: dict) -> dict[str, float]:
  """TensorBoard scalars of the step metrics: `train/<name>`, and `train/<name>_<i>` for each
  entry of a vector (e.g. TarFlow's per-block log-dets, `train/logdet_block_<i>`)."""
  scalars = {}
  for name, value in means.items():
    if np.ndim(value) == 0:
      scalars[f"train/{name}"] = float(value)
    else:
      scalars.update({f"train/{name}_{i}": float(v) for i, v in enumerate(np.ravel(value))})
  return scalars


def _restore_or_init(mngr, trainer, abstract_model, shardings, mesh, train_iter, config):
  """Resumes from the latest checkpoint (onto the current mesh) or initialises step 0."""
  latest = mngr.latest_step()
  if latest is None:
    logging.info("No checkpoint in the workdir: initialising from config.seed=%d", config.seed)
    return init_train_state(trainer, mesh, shardings)  # Seed init or config.init_from.
  abstract_state = jax.eval_shape(trainer.init_state, abstract_model)
  target = sharding.abstract_on(abstract_state, shardings)
  restored = checkpoint.restore_train_state(mngr, latest, target, config)
  train_iter.set_state(restored[checkpoint.DATA])
  logging.info("Resumed from %s step %d", mngr.directory, latest)
  return steps.TrainState(step=jax.device_put(jnp.int32(latest), sharding.replicated(mesh)),
                          model=restored[checkpoint.MODEL],
                          opt_state=restored[checkpoint.OPT], ema=restored.get(checkpoint.EMA))


def generate_samples(graphdef, model_state, config, mesh, num_images: int, seed: int):
  """Float NHWC sample batches of `config.sample.num_images` (the last one shorter) as the sample
  job makes them: sample i depends on (seed, i) only, classes balanced over all samples."""
  model = nnx.merge(graphdef, model_state)
  batch = sample_batches.padded_size(config.sample.num_images, mesh)
  for start in range(0, num_images, config.sample.num_images):
    count = min(config.sample.num_images, num_images - start)
    images, _, _ = sample_batches.generate(model, mesh, seed=seed, start=start, count=count,
                                           batch=batch, **sample_settings.from_config(config))
    yield images


def write_sample_images(writer, step: int, graphdef, model_state, config, mesh) -> None:
  """The step's sample grid ('samples', seed 0) and, with config.sample_trace, the sampling trace
  of its first images ('trace')."""
  images = next(generate_samples(graphdef, model_state, config, mesh, config.sample.num_images,
                                 seed=0))
  images = visualize.finite_samples(images, f"step {step} samples")
  logged = {"samples": visualize.make_grid(visualize.to_uint8(images))[None]}
  if config.sample_trace:
    trace = sample_trace(nnx.merge(graphdef, model_state), mesh, seed=0,
                         count=config.sample_trace, **sample_settings.for_trace(config))
    trace = visualize.finite_samples(trace, f"step {step} sampling trace")
    logged["trace"] = visualize.trace_grid(visualize.to_uint8(trace))[None]
  writer.write_images(step, logged)


def in_training_fid(graphdef, model_state, config, mesh) -> float:
  """FID of `config.fid.num_samples` samples (config.sample settings) against reference stats."""
  from tarflow_flax import fid  # pylint: disable=g-import-not-at-top
  extractor = fid.FeatureExtractor(fid.from_pth(config.fid.inception_pth),
                                   batch_size=min(64, config.sample.num_images),
                                   protocol=config.fid.protocol)
  images = (fid.to_uint8(b, config.fid.protocol) for b in generate_samples(
      graphdef, model_state, config, mesh, config.fid.num_samples, seed=FID_SEED))
  return fid.fid_against(extractor, images, fid.load_statistics(config.fid.ref_stats))[0]


def _hparams(config) -> dict[str, Any]:
  flat = {}

  def walk(prefix, node):
    for key, value in node.items():
      name = f"{prefix}{key}"
      if hasattr(value, "items"):
        walk(name + ".", value)
      elif isinstance(value, (int, float, str, bool)):
        flat[name] = value
      elif value is not None:
        flat[name] = str(value)

  walk("", config)
  return flat


def _check_finite(step: int, metrics: dict[str, float], last_saved, grad_clip_norm) -> None:
  bad = [k for k in ("loss", "grad_norm") if not np.isfinite(metrics[k])]
  if bad:
    remedy = "lower learning_rate" + ("" if grad_clip_norm else " or set grad_clip_norm")
    where = (f"The last good checkpoint (step {last_saved}) is intact: {remedy} and restart "
             "from it." if last_saved is not None else
             f"No checkpoint was written before it: {remedy} and start again.")
    raise NonFiniteLossError(
        f"non-finite {bad[0]}={metrics[bad[0]]} at step {step}; training stopped. {where}")


def _write_config(workdir: epath.Path, config) -> None:
  """workdir/config.json, by process 0, once the run has started (a run that fails at start
  leaves the previous one in place)."""
  if jax.process_index() == 0:
    (workdir / "config.json").write_text(json.dumps(json.loads(config.to_json()), indent=2))


def done_message(config, workdir) -> str:
  """The training job's last lines: what it wrote where, and what to run next."""
  workdir = runtime.path(workdir)
  events = runtime.path(config.metrics_dir) if config.metrics_dir else workdir
  shown = "losses, speed" + (", sample grids" if config.sample_every_steps else "") + (
      ", validation" if config.eval_every_steps or config.fid_every_steps else "")
  return "\n".join([
      f"done: trained to step {config.num_train_steps}; checkpoints and config.json in {workdir}",
      f"  TensorBoard events ({shown}): tensorboard --logdir {events}",
      f"  sample: python -m tarflow_flax.sample --workdir={workdir} --outdir={workdir / 'samples'}",
      f"  bits/dim: python -m tarflow_flax.evaluate --workdir={workdir} --metric=bpd"
      + ("  (or --metric=classify)" if config.model.num_classes else "")]
      + ([f"  sample grids as PNG files: {workdir / 'samples'}/step_<N>.png"]
         if config.sample_every_steps else []))


def train_and_evaluate(config, workdir) -> dict[str, float]:
  """Trains (resuming from `workdir/checkpoints` if present); returns the last logged metrics.

  Step counts left at 0 are derived from epochs over the train split and written into `config`
  (optim.derive_step_counts), so the checkpoints' config holds the counts the run used.

  Raises runtime.Interrupted after saving a checkpoint when a stop was requested (signal or
  preemption notice, agreed by all processes): rerunning resumes from that checkpoint.
  """
  config_lib.validate(config)
  mesh = runtime.make_mesh(config)
  dp = sharding.data_parallel_size(mesh)
  if config.batch_size % (dp * config.grad_accum_steps):
    raise config_lib.ConfigError(
        f"config.batch_size={config.batch_size}: must be divisible by the data-parallel size "
        f"{dp} × grad_accum_steps {config.grad_accum_steps}")
  logging.info("Processes: %d, devices: %d (%s), mesh: %s", jax.process_count(),
               jax.device_count(), jax.devices()[0].device_kind, dict(mesh.shape))
  workdir = runtime.path(workdir)
  metrics_dir = runtime.path(config.metrics_dir) if config.metrics_dir else workdir
  # Before the optimizer is made: its schedule needs the (maybe epoch-derived) step counts.
  train_source, _ = data_lib.data_source(config.data, config.data.train_split)
  optim.derive_step_counts(config, len(train_source))
  trainer, abstract_model = steps.make_trainer(config)
  shardings = steps.state_shardings(trainer, abstract_model, mesh)
  logging.info("Model: %.1f M parameters, %.2f GFLOPs per training image",
               flops.num_params(config) / 1e6, flops.train_flops_per_image(config) / 1e9)

  train_iter = data_lib.create_train_iterator(config)
  if config.eval_every_steps:  # Found now rather than at the first evaluation, hours in.
    data_lib.check_split(config.data, config.data.eval_split)
  mngr = checkpoint.manager(workdir / "checkpoints", max_to_keep=config.keep_checkpoints,
                            async_save=True)
  state = _restore_or_init(mngr, trainer, abstract_model, shardings, mesh, train_iter, config)
  start_step = int(state.step)
  last_saved = mngr.latest_step()
  _write_config(workdir, config)

  # Imported here: CLU's TensorBoard writer brings in TensorFlow (~5 s), which a job that stops
  # on a config, data or checkpoint error above never needs.
  from tarflow_flax import profiling, writers  # pylint: disable=g-import-not-at-top
  writer = writers.create(config, workdir, metrics_dir)
  profile = profiling.step_profile(config, str(metrics_dir))
  if start_step == 0:
    writer.write_hparams(_hparams(config))
  train_step = steps.compile_train_step(trainer, shardings, mesh)
  batches = data_lib.prefetch_to_device(train_iter, mesh, config.data.prefetch)
  stop = runtime.StopSignal()
  peak = flops.peak_tflops(jax.devices()[0].device_kind)
  train_flops = flops.train_flops_per_image(config)  # Model FLOPs (MFU), whatever remat does.
  hardware_flops = flops.hardware_train_flops_per_image(config)  # Incl. remat recompute (HFU).

  def save(step: int) -> None:
    nonlocal last_saved
    writer.flush()  # Metrics up to this step are durable with the checkpoint that covers them.
    mngr.save(step, force=True,
              args=checkpoint.train_state_args(state, batches.get_state(), config, save=True))
    last_saved = step

  summed, interval_steps = None, 0
  # Speed and time left: training steps of this process after its first (which compiles).
  pace = progress.Pace(config.num_train_steps, done=start_step)
  last_metrics: dict[str, float] = {}
  step, preempted = start_step, False
  if step < config.num_train_steps:
    logging.info("Compiling the training step (the first step waits for it)…")
  first_step_start = time.time()
  try:
    if profile:
      profile(step)
    while step < config.num_train_steps:
      state, metrics = train_step(state, next(batches))
      step += 1
      if profile:
        profile(step, pending=metrics)
      interval_steps += 1
      summed = metrics if summed is None else jax.tree.map(jnp.add, summed, metrics)
      if step == start_step + 1:
        jax.block_until_ready(metrics)
        logging.info("First step done in %.0f s (compilation included)",
                     time.time() - first_step_start)
      is_last = step == config.num_train_steps
      preempted = stop.should_stop(step)
      do_ckpt = step % config.checkpoint_every_steps == 0 or is_last or preempted
      do_log = step % config.log_every_steps == 0 or do_ckpt
      if do_log:  # Fetching the metrics waits for the step: the pace counts it whole.
        means = jax.device_get(jax.tree.map(lambda a: a / interval_steps, summed))
      pace.advance()
      if do_log:
        _check_finite(step, means, last_saved, config.grad_clip_norm)
        scalars = train_scalars(means)
        steps_per_sec = pace.window_rate()
        if steps_per_sec:
          images_per_sec = steps_per_sec * config.batch_size
          scalars.update({"perf/steps_per_sec": steps_per_sec,
                          "perf/images_per_sec": images_per_sec})
          if peak:
            scalars["perf/mfu"] = flops.utilization(train_flops, images_per_sec, peak,
                                                    jax.device_count())
            scalars["perf/hfu"] = flops.utilization(hardware_flops, images_per_sec, peak,
                                                    jax.device_count())
        writer.write_scalars(step, scalars)
        logging.info("step %d/%d  loss %.5f  bpd %.4f  %.1f img/s  %s left", step,
                     config.num_train_steps, scalars["train/loss"], scalars["train/bpd"],
                     scalars.get("perf/images_per_sec", float("nan")), pace.time_left())
        last_metrics = scalars
        summed, interval_steps = None, 0
      with pace.paused():  # Checkpoints, samples and evaluations are not training steps.
        if do_ckpt:
          save(step)
        if preempted:
          break
        if config.sample_every_steps and (step % config.sample_every_steps == 0 or is_last):
          sample_state = state.ema if state.ema is not None else state.model
          write_sample_images(writer, step, trainer.graphdef, sample_state, config, mesh)
        if config.eval_every_steps and (step % config.eval_every_steps == 0 or is_last):
          eval_state = state.ema if state.ema is not None else state.model
          result = eval_lib.evaluate_bpd(trainer.graphdef, eval_state, config, mesh,
                                         num_batches=config.num_eval_batches)
          writer.write_scalars(step, {"eval/bpd": result["bpd"],
                                      "eval/bpd_stderr": result["bpd_stderr"]})
          logging.info("step %d  validation bits/dim %.4f ± %.4f (%d images)", step,
                       result["bpd"], result["bpd_stderr"], result["num_images"])
          last_metrics["eval/bpd"] = result["bpd"]
          if config.model.num_classes:
            accuracy = eval_lib.evaluate_accuracy(trainer.graphdef, eval_state, config, mesh,
                                                  num_batches=config.num_eval_batches)["accuracy"]
            writer.write_scalars(step, {"eval/accuracy": accuracy})
            logging.info("step %d  Bayes-classifier accuracy %.4f", step, accuracy)
            last_metrics["eval/accuracy"] = accuracy
        if config.fid_every_steps and (step % config.fid_every_steps == 0 or is_last):
          fid_state = state.ema if state.ema is not None else state.model
          value = in_training_fid(trainer.graphdef, fid_state, config, mesh)
          writer.write_scalars(step, {"eval/fid": value})
          logging.info("step %d  FID %.2f (%d samples)", step, value, config.fid.num_samples)
  finally:
    if profile:
      profile.close()
    stop.close()
    mngr.wait_until_finished()
    mngr.close()
    writer.flush()
    writer.close()
  if preempted:
    raise runtime.Interrupted(f"stopped at step {step} with a checkpoint in "
                              f"{workdir / 'checkpoints'}; rerun the same command to resume")
  return last_metrics
