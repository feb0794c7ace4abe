"""The training loop: sharded steps, CLU metrics, Orbax checkpoints with automatic resume.

`train_and_evaluate(config, workdir)` is the whole job; `main.py` only parses flags. Every process
of a multi-host job runs it; process 0 writes metrics; Orbax coordinates checkpoint writes.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers
from etils import epath
from flax import nnx

from tarflow_flax import checkpoint, config_lib, eval_lib, flops, sampling, sharding, steps
from tarflow_flax import input_pipeline as data_lib
from tarflow_flax import visualize
from tarflow_flax import finetune

OPT, DATA = "opt", "data"


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/inf loss or gradient; the last good checkpoint is kept."""


class _StopRequest:
  """Set by SIGTERM (e.g. a preemptible VM being reclaimed); the loop saves and exits."""

  def __init__(self):
    self.requested = False
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread (e.g. a test runner thread): no handler.
      self._previous = None

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint and stopping.")
    self.requested = True

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _checkpoint_args(state: steps.TrainState, data_state, config, save: bool):
  """Composite save/restore args for a TrainState (restore: `state` holds abstract arrays)."""
  pytree = ocp.args.StandardSave if save else ocp.args.StandardRestore
  json_arg = (lambda v: ocp.args.JsonSave(v)) if save else (lambda v: ocp.args.JsonRestore())
  items = {checkpoint.MODEL: pytree(state.model), OPT: pytree(state.opt_state),
           DATA: json_arg(data_state),
           checkpoint.META: json_arg({"config": config.to_json()})}
  if state.ema is not None:
    items[checkpoint.EMA] = pytree(state.ema)
  return ocp.args.Composite(**items)


def _abstract_with_shardings(abstract_tree, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_tree, shardings)


def _restore_or_init(mngr, trainer, abstract_model, shardings, mesh, train_iter, config):
  """Resumes from the latest checkpoint (onto the current mesh) or initialises step 0."""
  latest = mngr.latest_step()
  if latest is None:
    logging.info("No checkpoint in the workdir: initialising from config.seed=%d", config.seed)
    return finetune.init_train_state(trainer, mesh, shardings)  # Seed init or config.init_from.
  abstract_state = jax.eval_shape(trainer.init_state, abstract_model)
  target = _abstract_with_shardings(abstract_state, shardings)
  try:
    restored = mngr.restore(latest, args=_checkpoint_args(target, None, config, save=False))
  except Exception as e:
    raise checkpoint.CheckpointError(
        f"cannot resume from {mngr.directory} step {latest} ({type(e).__name__}: "
        f"{str(e).splitlines()[0][:300]}); move the broken step away to resume from an "
        "earlier one") from e
  train_iter.set_state(restored[DATA])
  logging.info("Resumed from %s step %d", mngr.directory, latest)
  return steps.TrainState(step=jax.device_put(jnp.int32(latest), sharding.replicated(mesh)),
                          model=restored[checkpoint.MODEL], opt_state=restored[OPT],
                          ema=restored.get(checkpoint.EMA))


def sample_images(graphdef, model_state, config, mesh, num_images: int,
                  seed: int = 0) -> np.ndarray:
  """Samples (uint8 NHWC) from a model state with the config's guidance and denoising."""
  model = nnx.merge(graphdef, model_state)
  noise = jax.random.normal(jax.random.key(seed), (num_images, model.num_tokens, model.token_dim))
  labels = None
  if config.model.num_classes:
    labels = jnp.arange(num_images, dtype=jnp.int32) % config.model.num_classes
  s = config.sample
  images = model.reverse(noise, labels, guidance=s.guidance, guide_what=s.guide_what,
                         attn_temp=s.attn_temp, annealed_guidance=s.annealed_guidance)
  if s.denoise and config.data.noise_type == "gaussian":
    images = sampling.denoise(model, images, labels, config.data.noise_std)
  # Gather to every host (the result may be sharded over devices of several processes).
  images = jax.jit(lambda x: x, out_shardings=sharding.replicated(mesh))(images)
  return visualize.to_uint8(np.asarray(images))


def in_training_fid(graphdef, model_state, config, mesh) -> float:
  """FID of `config.fid.num_samples` samples (config.sample settings) against reference stats."""
  from tarflow_flax import fid  # pylint: disable=g-import-not-at-top
  extractor = fid.FeatureExtractor(fid.from_pth(config.fid.inception_pth),
                                   batch_size=min(64, config.sample.num_images))
  mu_ref, sigma_ref, _ = fid.load_statistics(config.fid.ref_stats)
  batch = config.sample.num_images
  batches = (sample_images(graphdef, model_state, config, mesh, batch, seed=1000 + i)
             for i in range(-(-config.fid.num_samples // batch)))
  mu, sigma, _ = extractor.statistics(batches)
  return fid.frechet_distance(mu, sigma, mu_ref, sigma_ref)


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


def _check_finite(step: int, metrics: dict[str, float], last_saved) -> None:
  bad = [k for k in ("loss", "grad_norm") if not np.isfinite(metrics[k])]
  if bad:
    raise NonFiniteLossError(
        f"non-finite {bad[0]}={metrics[bad[0]]} at step {step}; training stopped. The last good "
        f"checkpoint (step {last_saved}) is intact: lower learning_rate or set grad_clip_norm "
        "and restart from it.")


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Trains (resuming from `workdir/checkpoints` if present); returns the last logged metrics."""
  config_lib.validate(config)
  mesh = sharding.make_mesh(config.mesh)
  dp = sharding.data_parallel_size(mesh)
  if config.batch_size % (dp * config.grad_accum_steps):
    raise config_lib.ConfigError(
        f"config.batch_size={config.batch_size}: must be divisible by the data-parallel size "
        f"{dp} × grad_accum_steps {config.grad_accum_steps}")
  logging.info("Processes: %d, devices: %d (%s), mesh: %s", jax.process_count(),
               jax.device_count(), jax.devices()[0].device_kind, dict(mesh.shape))
  workdir = epath.Path(workdir)
  trainer, abstract_model = steps.make_trainer(config)
  shardings = steps.state_shardings(trainer, abstract_model, mesh)
  logging.info("Model: %.1f M parameters, %.2f GFLOPs per training image",
               flops.num_params(config) / 1e6, flops.train_flops_per_image(config) / 1e9)

  train_iter = data_lib.create_train_iterator(config)
  mngr = checkpoint.manager(str(workdir / "checkpoints"), max_to_keep=config.keep_checkpoints,
                            async_save=True)
  state = _restore_or_init(mngr, trainer, abstract_model, shardings, mesh, train_iter, config)
  start_step = int(state.step)
  last_saved = mngr.latest_step()

  writer = metric_writers.create_default_writer(str(workdir),
                                                just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams(_hparams(config))
  train_step = steps.compile_train_step(trainer, shardings, mesh)
  batches = data_lib.prefetch_to_device(train_iter, mesh, config.data.prefetch)
  stop = _StopRequest()
  peak = flops.peak_tflops(jax.devices()[0].device_kind)
  train_flops = flops.train_flops_per_image(config)

  def save(step: int) -> None:
    nonlocal last_saved
    writer.flush()  # Metrics up to this step are durable with the checkpoint that covers them.
    mngr.save(step, args=_checkpoint_args(state, batches.get_state(), config, save=True),
              force=True)
    last_saved = step

  summed, interval_start, interval_steps = None, time.time(), 0
  last_metrics: dict[str, float] = {}
  step = start_step
  try:
    while step < config.num_train_steps:
      state, metrics = train_step(state, next(batches))
      step += 1
      interval_steps += 1
      summed = metrics if summed is None else jax.tree.map(jnp.add, summed, metrics)
      is_last = step == config.num_train_steps
      preempted = stop.requested or mngr.reached_preemption(step)
      do_ckpt = step % config.checkpoint_every_steps == 0 or is_last or preempted
      if step % config.log_every_steps == 0 or do_ckpt:
        means = jax.device_get(jax.tree.map(lambda a: a / interval_steps, summed))
        _check_finite(step, means, last_saved)
        elapsed = time.time() - interval_start
        images_per_sec = interval_steps * config.batch_size / elapsed
        scalars = {f"train/{k}": float(v) for k, v in means.items() if k != "block_logdets"}
        scalars.update({f"train/logdet_block_{i}": float(v)
                        for i, v in enumerate(means["block_logdets"])})
        scalars.update({"perf/steps_per_sec": interval_steps / elapsed,
                        "perf/images_per_sec": images_per_sec})
        if peak:
          scalars["perf/mfu"] = train_flops * images_per_sec / (peak * 1e12 * jax.device_count())
        writer.write_scalars(step, scalars)
        eta = (config.num_train_steps - step) * elapsed / interval_steps
        logging.info("step %d/%d  loss %.5f  bpd %.4f  %.1f img/s  %s left", step,
                     config.num_train_steps, scalars["train/loss"], scalars["train/bpd"],
                     images_per_sec, time.strftime("%H:%M:%S", time.gmtime(eta)))
        last_metrics = scalars
        summed, interval_start, interval_steps = None, time.time(), 0
      if do_ckpt:
        save(step)
      if config.sample_every_steps and (step % config.sample_every_steps == 0 or is_last):
        sample_state = state.ema if state.ema is not None else state.model
        images = sample_images(trainer.graphdef, sample_state, config, mesh,
                               config.sample.num_images)
        writer.write_images(step, {"samples": visualize.make_grid(images)[None]})
      if config.eval_every_steps and (step % config.eval_every_steps == 0 or is_last):
        eval_state = state.ema if state.ema is not None else state.model
        result = eval_lib.evaluate_bpd(trainer.graphdef, eval_state, config, mesh,
                                       num_batches=config.num_eval_batches)
        writer.write_scalars(step, {"eval/bpd": result["bpd"],
                                    "eval/bpd_stderr": result["bpd_stderr"]})
        logging.info("step %d  validation bits/dim %.4f ± %.4f (%d images)", step,
                     result["bpd"], result["bpd_stderr"], result["num_images"])
        last_metrics["eval/bpd"] = result["bpd"]
      if config.fid_every_steps and (step % config.fid_every_steps == 0 or is_last):
        fid_state = state.ema if state.ema is not None else state.model
        value = in_training_fid(trainer.graphdef, fid_state, config, mesh)
        writer.write_scalars(step, {"eval/fid": value})
        logging.info("step %d  FID %.2f (%d samples)", step, value, config.fid.num_samples)
      if preempted:
        logging.warning("Stopped at step %d after a preemption request; rerun to resume.", step)
        break
  finally:
    stop.restore()
    mngr.wait_until_finished()
    mngr.close()
    writer.flush()
    writer.close()
  return last_metrics
