"""Our train step and sequential sampler side by side with the PyTorch reference (float32, CPU).

  python benchmarks/vs_reference.py --reference=PATH/transformer_flow.py [--rows=0,1,2] \
      [--repeats=5] [--torch_threads=2] [--config.model.scan_layers=False] [--json=F]

The rows are the shapes of issue 13 (width 256, 4 blocks × 4 layers). With --reference (the
user's copy of ml-tarflow's transformer_flow.py, loaded from that path; pip install -e
".[bench]" for torch), both models get the same weights (the reference's random init, proj_out
perturbed so sampling is not trivial, converted by tarflow_flax.convert) and each timed call
alternates ours / theirs, so load from other processes hits both alike. Train step: noise, forward,
loss, backward, AdamW update (ours: the trainer's jitted step). Sampling: the exact sequential
inverse. Prints medians, images/s, the ratio ours/theirs, and max|Δ| of the loss and the samples.
Without --reference only ours is timed.
"""

import copy
import importlib.util
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from etils import epath
from flax import nnx
from ml_collections import config_flags

import common  # benchmarks/common.py (the script's own folder is on sys.path)
from tarflow_flax import config_lib, convert, losses, models, sharding, steps
from tarflow_flax.models import tarflow_config
from tarflow_flax.sampling import sequential

ROWS = (  # (label, image size, patch, batch, classes, guidance)
    ("32x32x3 p2 b16", 32, 2, 16, 0, 0.0),
    ("64x64x3 p4 b8", 64, 4, 8, 0, 0.0),
    ("32x32x3 p2 b16, 10 classes, guidance 2", 32, 2, 16, 10, 2.0),
)

_CONFIG = config_flags.DEFINE_config_dict("config", config_lib.base_config(),
                                          "Our model/training keys (shapes come from the rows).")
_REFERENCE = flags.DEFINE_string("reference", None, "PATH/transformer_flow.py of ml-tarflow.")
_ROWS = flags.DEFINE_list("rows", ["0", "1", "2"], "Which rows of ROWS to run.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per model and task (median).")
_THREADS = flags.DEFINE_integer("torch_threads", 2, "torch.set_num_threads.")
_WHAT = flags.DEFINE_list("what", ["train", "sample"], "Tasks to time.")
_JSON = flags.DEFINE_string("json", None, "Also write the JSON result here.")


def load_reference(path: str):
  if not epath.Path(path).is_file():
    raise app.UsageError(f"--reference={path}: no such file")
  spec = importlib.util.spec_from_file_location("tarflow_reference", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


class Ours:
  """The trainer's jitted step and the model's sequential inverse, from given weights."""

  def __init__(self, config, model):
    self.config = config
    mesh = sharding.make_mesh(config.mesh)
    trainer, abstract = steps.make_trainer(config)
    shardings = steps.state_shardings(trainer, abstract, mesh)
    # A copy: the step donates its state, which must not delete the arrays `model` samples with.
    self.state = jax.device_put(trainer.init_state(jax.tree.map(jnp.copy, nnx.state(model))),
                                shardings)
    self.step = steps.compile_train_step(trainer, shardings, mesh)
    self.model = model

  def train(self, batch):
    self.state, metrics = self.step(self.state, batch)
    jax.block_until_ready(metrics)

  def sample(self, noise, y, guidance):
    return jax.block_until_ready(sequential.reverse(self.model, noise, y, guidance=guidance))


class Theirs:
  """The reference Model with AdamW as its trainer uses it."""

  def __init__(self, torch, module, config, noise_std):
    self.torch = torch
    m = config.model
    torch.manual_seed(config.seed)
    self.model = module.Model(m.in_channels, config.image_size, m.patch_size, m.channels,
                              m.num_blocks, m.layers_per_block, nvp=m.nvp,
                              num_classes=m.num_classes)
    for block in self.model.blocks:  # Non-zero proj_out: sampling is then not a fixed map.
      torch.nn.init.normal_(block.proj_out.weight, std=0.1 / m.channels**0.5)
    self.noise_std = noise_std
    self.sampler = copy.deepcopy(self.model)  # The initial weights, as ours samples from.
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=config.learning_rate,
                                 betas=(config.adam_b1, config.adam_b2),
                                 weight_decay=config.weight_decay)

  def state_dict(self):
    return {k: v.detach().numpy() for k, v in self.model.state_dict().items()}

  def train(self, images, y):
    x = images + self.noise_std * self.torch.randn_like(images)
    z, _, logdets = self.model(x, y)
    loss = self.model.get_loss(z, logdets)
    self.opt.zero_grad()
    loss.backward()
    self.opt.step()

  def sample(self, noise, y, guidance):
    with self.torch.no_grad():
      return self.sampler.reverse(noise.clone(), y, guidance=guidance)


def run_row(row, reference) -> dict:
  label, size, patch, batch, classes, guidance = row
  config = config_lib.override(_CONFIG.value.copy_and_resolve_references(), {
      "image_size": size, "model.in_channels": 3, "model.patch_size": patch,
      "model.channels": 256, "model.num_blocks": 4, "model.layers_per_block": 4,
      "model.num_classes": classes, "model.dtype": "float32", "batch_size": batch})
  rng = np.random.default_rng(0)
  images_u8 = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
  labels = rng.integers(0, max(classes, 1), (batch,)).astype(np.int32)
  noise = rng.standard_normal((batch, (size // patch)**2, 3 * patch * patch)).astype(np.float32)
  perm = convert.token_permutation(3, patch)  # Reference token layout → ours.
  y = jnp.asarray(labels) if classes else None
  model = models.build_model(config)
  theirs = None
  if reference:
    torch = reference[0]
    theirs = Theirs(torch, reference[1], config, config.data.noise_std)
    kwargs = tarflow_config.model_kwargs(config)
    for key in ("cond_dim", "soft_clip"):  # Not in reference checkpoints.
      kwargs.pop(key)
    nnx.update(model, nnx.state(convert.model_from_torch_state_dict(theirs.state_dict(),
                                                                    **kwargs)))
  ours = Ours(config, model)
  batch_dev = {"image": jnp.asarray(images_u8), "label": jnp.asarray(labels),
               "index": jnp.arange(batch, dtype=jnp.uint32)}
  result = {"row": label, "batch": batch}
  if theirs is not None:  # Sanity: same weights, same inputs → same loss and samples.
    x = images_u8.astype(np.float32) / 127.5 - 1.0
    z, logdets, _ = nnx.jit(lambda m, x, y: m(x, y))(model, jnp.asarray(x), y)
    with torch.no_grad():
      zt, _, lt = theirs.model(torch.from_numpy(x.transpose(0, 3, 1, 2)).contiguous(),
                               torch.from_numpy(labels).long() if classes else None)
      loss_ref = float(theirs.model.get_loss(zt, lt))
    result["loss_abs_diff"] = abs(float(losses.nll_loss(z, logdets)) - loss_ref)
  for what in _WHAT.value:
    if what == "train":
      ours_fn = lambda: ours.train(batch_dev)
      if theirs is not None:
        x = torch.from_numpy(images_u8.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)
        yt = torch.from_numpy(labels).long() if classes else None
        theirs_fn = lambda: theirs.train(x, yt)
    else:
      ours_noise = jnp.asarray(noise[..., perm])
      ours_fn = lambda: ours.sample(ours_noise, y, guidance)
      if theirs is not None:
        yt = torch.from_numpy(labels).long() if classes else None
        theirs_fn = lambda: theirs.sample(torch.from_numpy(noise), yt, guidance)
        ours_img = np.asarray(ours_fn())
        their_img = theirs_fn().numpy().transpose(0, 2, 3, 1)
        result["sample_max_abs_diff"] = float(np.max(np.abs(ours_img - their_img)))
    fns = {"ours": ours_fn} | ({"theirs": theirs_fn} if theirs is not None else {})
    if what == "train" or theirs is None:  # Warm-up (compiles ours); the sanity check was one.
      for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(_REPEATS.value):  # Interleaved.
      for name, fn in fns.items():
        times[name].append(timed(fn))
    logging.info("%s %s: %s", label, what, times)
    for name, ts in times.items():
      result[f"{what}_{name}_s"] = statistics.median(ts)
      result[f"{what}_{name}_images_per_s"] = batch / statistics.median(ts)
    if theirs is not None:
      result[f"{what}_ratio"] = (result[f"{what}_ours_images_per_s"] /
                                 result[f"{what}_theirs_images_per_s"])
  return result


def main(argv):
  del argv
  reference = None
  if _REFERENCE.value:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(_THREADS.value)
    reference = (torch, load_reference(_REFERENCE.value))
  results = []
  for index in _ROWS.value:
    result = run_row(ROWS[int(index)], reference)
    results.append(result)
    cells = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()]
    print(" | ".join(cells), flush=True)
  common.emit_json({"device": jax.devices()[0].device_kind,
                    "torch": reference[0].__version__ if reference else None,
                    "torch_threads": _THREADS.value if reference else None,
                    "load_avg": list(os.getloadavg()), "rows": results}, _JSON.value)


if __name__ == "__main__":
  app.run(main)
