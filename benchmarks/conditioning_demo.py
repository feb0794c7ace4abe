"""Short embedded-MNIST runs measuring two model features (not a CI test: minutes on a CPU).

  python benchmarks/conditioning_demo.py --what=adaln --workdir=/tmp/demo [--steps=600] [--json=F]
  python benchmarks/conditioning_demo.py --what=soft_clip --soft_clip=2 --workdir=/tmp/demo

adaln: trains configs/tiny.py widened (2 blocks x 2 layers, 64 channels, 16x16, batch 64) with
  model.cond_dim=1 on the builder's standardised ink mass (data.cond_key='ink'), then samples 64
  images for each requested ink value (with and without guidance) and reports the samples'
  standardised ink (mean brightness, standardised with the training images' own statistics at
  this resolution): the conditioning works if it rises with the requested value.
soft_clip: the same model, unconditional, trained with model.soft_clip=0 and =--soft_clip on the
  same batches; reports the loss curves, the final validation bits/dim and max |log-scale|.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import common  # benchmarks/common.py (the script's own folder is on sys.path)
from tarflow_flax import checkpoint, config_lib, sampling, train
from tarflow_flax import input_pipeline as data_lib

_WHAT = flags.DEFINE_enum("what", "adaln", ["adaln", "soft_clip"], "Which measurement.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/conditioning_demo", "Where the runs go.")
_STEPS = flags.DEFINE_integer("steps", 600, "Training steps per run.")
_CLIP = flags.DEFINE_float("soft_clip", 2.0, "The soft clip compared with 0.")
_VALUES = flags.DEFINE_list("values", ["-1.5", "0", "1.5"], "Requested ink values (adaln).")
_GUIDANCE = flags.DEFINE_float("guidance", 1.0, "Guided sampling weight (adaln).")
_JSON = flags.DEFINE_string("json", None, "Also write the JSON result to this file.")


def demo_config(**overrides):
  c = config_lib.base_config()
  c.image_size = 16
  c.model.in_channels = 1
  c.model.channels = 64
  c.model.num_blocks = 2
  c.model.layers_per_block = 2
  c.batch_size = 64
  c.num_train_steps = _STEPS.value
  c.learning_rate = 1e-3
  c.min_learning_rate = 1e-5
  c.warmup_steps = 50
  c.grad_clip_norm = 1.0
  c.ema_decay = 0.999
  c.log_every_steps = 50
  c.checkpoint_every_steps = _STEPS.value
  c.num_eval_batches = 8
  return config_lib.override(c, overrides)


def ink_statistics(config, num_batches: int = 20) -> tuple[float, float]:
  """Mean and std of the training images' mean brightness in [0, 1], at this resolution."""
  it = data_lib.create_train_iterator(config, process_index=0, process_count=1)
  means = []
  for _ in range(num_batches):
    image = next(it)["image"]
    means.append(((np.clip(image, -1, 1) + 1) / 2).reshape(len(image), -1).mean(axis=1))
  means = np.concatenate(means)
  return float(means.mean()), float(means.std())


def adaln_demo(workdir: str) -> dict:
  config = demo_config(**{"model.cond_dim": 1, "data.cond_key": "ink"})
  metrics = train.train_and_evaluate(config, workdir)
  model = checkpoint.load_model(f"{workdir}/checkpoints").model
  mu, sd = ink_statistics(config)
  noise = jax.random.normal(jax.random.key(0), (64, model.num_tokens, model.token_dim))
  result = {"train_loss": metrics["train/loss"], "data_brightness_mean": mu,
            "data_brightness_std": sd, "samples": []}
  for guidance in (0.0, _GUIDANCE.value):
    for value in _VALUES.value:
      y_cont = jnp.full((64, 1), float(value), jnp.float32)
      images, _ = sampling.sample(model, noise, y_cont=y_cont, guidance=guidance,
                                  denoise_std=config.data.noise_std)
      brightness = ((np.clip(np.asarray(images), -1, 1) + 1) / 2).reshape(64, -1).mean(axis=1)
      ink = (brightness - mu) / sd
      result["samples"].append({"requested": float(value), "guidance": guidance,
                                "sample_ink_mean": float(ink.mean()),
                                "sample_ink_sem": float(ink.std() / np.sqrt(len(ink)))})
      print(f"guidance {guidance:.1f}  requested ink {float(value):+.2f}  →  samples "
            f"{ink.mean():+.3f} ± {ink.std() / 8:.3f}")
  return result


def read_loss(logdir) -> dict[int, float]:
  """{step: train/loss} from the run's TensorBoard events."""
  # pylint: disable=g-import-not-at-top
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util
  acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"tensors": 0})
  acc.Reload()
  return {e.step: round(float(tensor_util.make_ndarray(e.tensor_proto)), 5)
          for e in acc.Tensors("train/loss")}


def soft_clip_demo(workdir: str) -> dict:
  result = {}
  for clip in (0.0, _CLIP.value):
    config = demo_config(**{"model.soft_clip": clip, "eval_every_steps": _STEPS.value})
    run = f"{workdir}/soft_clip_{clip:g}"
    metrics = train.train_and_evaluate(config, run)
    model = checkpoint.load_model(f"{run}/checkpoints", use_ema=False).model
    batch = next(data_lib.create_train_iterator(config, process_index=0, process_count=1))
    patches = model.patchify(jnp.asarray(batch["image"]))
    max_a = 0.0
    for block in model.blocks:  # Forward order, tracking each block's input.
      a, _ = block.transform_params(block.permute(patches), None)
      max_a = max(max_a, float(jnp.abs(a).max()))
      patches, _ = block(patches)
    result[f"soft_clip={clip:g}"] = {"loss_curve": read_loss(run),
                                     "final_train_loss": metrics["train/loss"],
                                     "eval_bpd": metrics.get("eval/bpd"),
                                     "max_abs_log_scale": max_a}
    print(json.dumps({f"soft_clip={clip:g}": result[f"soft_clip={clip:g}"]}))
  return result


def main(argv):
  del argv
  workdir = f"{_WORKDIR.value}/{_WHAT.value}"
  result = adaln_demo(workdir) if _WHAT.value == "adaln" else soft_clip_demo(workdir)
  common.emit_json({"what": _WHAT.value, "steps": _STEPS.value, **result}, _JSON.value)


if __name__ == "__main__":
  app.run(main)
