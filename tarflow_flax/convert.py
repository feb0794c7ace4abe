"""Import PyTorch TarFlow weights (ml-tarflow state_dicts) into the Flax NNX model.

  python -m tarflow_flax.convert --pth afhq.pth --config configs/afhq256.py --out /ckpt/afhq

The `.pth` is read by `torch_io` (no torch, no pickled code runs). Layout differences handled here:
torch Linear weights are (out, in) → NNX kernels (in, out); per-block layers are stacked on a leading
axis; the token vector is reordered from the reference's (c, ph, pw) to our (ph, pw, c), which
permutes proj_in's input features, proj_out's output features (within each of the a/b halves) and
the columns of `var`.
"""

from __future__ import annotations

import re
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from tarflow_flax import checkpoint, config_lib, job_flags, runtime, sharding
from tarflow_flax.models import TarFlow, tarflow_config
from tarflow_flax.torch_io import UnsafePickleError, load_torch_state_dict

__all__ = ["load_torch_state_dict", "model_from_torch_state_dict", "token_permutation",
           "UnsafePickleError", "StateDictMismatchError"]

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers.

# torch sub-module path inside a transformer layer → our path inside the stacked layers.
_LAYER_PARAMS = {
    "attention.norm.weight": ("attention", "norm", "scale"),
    "attention.norm.bias": ("attention", "norm", "bias"),
    "attention.qkv.weight": ("attention", "qkv", "kernel"),
    "attention.qkv.bias": ("attention", "qkv", "bias"),
    "attention.proj.weight": ("attention", "proj", "kernel"),
    "attention.proj.bias": ("attention", "proj", "bias"),
    "mlp.norm.weight": ("mlp", "norm", "scale"),
    "mlp.norm.bias": ("mlp", "norm", "bias"),
    "mlp.main.0.weight": ("mlp", "up", "kernel"),
    "mlp.main.0.bias": ("mlp", "up", "bias"),
    "mlp.main.2.weight": ("mlp", "down", "kernel"),
    "mlp.main.2.bias": ("mlp", "down", "bias"),
}


class StateDictMismatchError(ValueError):
  """The state_dict does not fit the model the config describes."""


def token_permutation(in_channels: int, patch_size: int) -> np.ndarray:
  """perm with ours[j] = reference[perm[j]] for a token vector ((ph, pw, c) vs (c, ph, pw))."""
  p2 = patch_size * patch_size
  return np.arange(in_channels * p2).reshape(in_channels, patch_size, patch_size).transpose(
      1, 2, 0).reshape(-1)


def _strip_wrappers(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {}
  for key, value in state_dict.items():
    for prefix in _WRAPPER_PREFIXES:
      if key.startswith(prefix):
        key = key[len(prefix):]
    out[key] = value
  return out


def _torch_layout(model: TarFlow) -> dict[str, tuple[tuple, Callable, tuple]]:
  """{torch key: (our state path, torch array → our array, expected torch shape)}."""
  perm = token_permutation(model.in_channels, model.patch_size)
  cp = model.token_dim
  layout = {"var": (("var",), lambda a: a[:, perm], (model.num_tokens, cp))}
  for b, block in enumerate(model.blocks):
    pre = f"blocks.{b}."
    channels = block.pos_embed.shape[1]
    out_perm = np.concatenate([perm, cp + perm]) if block.nvp else perm
    out_dim = out_perm.size
    layout[pre + "pos_embed"] = (("blocks", b, "pos_embed"), lambda a: a,
                                 (model.num_tokens, channels))
    if block.class_embed is not None:
      layout[pre + "class_embed"] = (("blocks", b, "class_embed"), lambda a: a[:, 0, :],
                                     (model.num_classes, 1, channels))
    layout[pre + "proj_in.weight"] = (("blocks", b, "proj_in", "kernel"),
                                      lambda a: a.T[perm, :], (channels, cp))
    layout[pre + "proj_in.bias"] = (("blocks", b, "proj_in", "bias"), lambda a: a, (channels,))
    layout[pre + "proj_out.weight"] = (("blocks", b, "proj_out", "kernel"),
                                       lambda a, p=out_perm: a.T[:, p], (out_dim, channels))
    layout[pre + "proj_out.bias"] = (("blocks", b, "proj_out", "bias"),
                                     lambda a, p=out_perm: a[p], (out_dim,))
    for layer in range(block.num_layers):
      for torch_name, ours in _LAYER_PARAMS.items():
        leaf = getattr(getattr(getattr(block.layers, ours[0]), ours[1]), ours[2])
        is_kernel = ours[2] == "kernel"
        shape = leaf.shape[1:][::-1] if is_kernel else leaf.shape[1:]
        layout[f"{pre}attn_blocks.{layer}.{torch_name}"] = (
            ("blocks", b, "layers") + ours, (lambda a: a.T) if is_kernel else (lambda a: a),
            tuple(shape))
  return layout


def model_from_torch_state_dict(state_dict: dict[str, np.ndarray], *, in_channels: int,
                                img_size: int, patch_size: int, channels: int, num_blocks: int,
                                layers_per_block, nvp: bool = True, num_classes: int = 0,
                                **runtime_options) -> TarFlow:
  """A float32-parameter TarFlow holding the reference state_dict's weights.

  runtime_options: any of `tarflow_config.RUNTIME_ONLY_KEYS` (dtype, remat, ...), passed to the
  model; they do not change which weights it has.
  Raises StateDictMismatchError naming the first missing, unexpected or mis-shaped key.
  """
  unknown = set(runtime_options) - set(tarflow_config.RUNTIME_ONLY_KEYS)
  if unknown:
    raise TypeError(f"not runtime-only model options: {sorted(unknown)}")
  kwargs = dict(in_channels=in_channels, img_size=img_size, patch_size=patch_size,
                channels=channels, num_blocks=num_blocks, layers_per_block=layers_per_block,
                nvp=nvp, num_classes=num_classes)
  model = nnx.eval_shape(lambda: TarFlow(**kwargs, **runtime_options, rngs=nnx.Rngs(0)))
  layout = _torch_layout(model)
  state_dict = _strip_wrappers(state_dict)
  for key in state_dict:
    if key not in layout and not re.fullmatch(r"blocks\.\d+\.attn_mask", key):
      raise StateDictMismatchError(f"unexpected key {key!r} (shape {state_dict[key].shape}) for "
                                   f"the model {kwargs}")
  graphdef, state = nnx.split(model)
  flat = dict(nnx.to_flat_state(state))
  stacked: dict[tuple, list] = {}
  for key, (path, to_ours, torch_shape) in layout.items():
    if key not in state_dict:
      raise StateDictMismatchError(f"missing key {key!r} (expected shape {torch_shape}) for the "
                                   f"model {kwargs}")
    value = np.asarray(state_dict[key])
    if value.shape != torch_shape:
      raise StateDictMismatchError(f"key {key!r}: checkpoint shape {value.shape}, the model "
                                   f"{kwargs} expects {torch_shape}")
    value = to_ours(value.astype(np.float32))
    if "layers" in path:
      stacked.setdefault(path, []).append(value)
    else:
      flat[path].set_value(jnp.asarray(value))
  for path, values in stacked.items():
    flat[path].set_value(jnp.asarray(np.stack(values)))
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def model_from_pth(path: str, config) -> TarFlow:
  """Reads a `.pth` and builds the config's model from it (compute dtype from the config)."""
  if config.model.name != "tarflow":
    raise config_lib.ConfigError(f"config.model.name={config.model.name!r}: reference "
                                 "checkpoints are TarFlow models ('tarflow')")
  kwargs = tarflow_config.model_kwargs(config)
  kwargs.pop("soft_clip")  # Not a weight: the saved config carries it to whoever loads.
  if kwargs.pop("cond_dim"):
    raise config_lib.ConfigError("config.model.cond_dim: reference checkpoints have no AdaLN "
                                 "weights; convert with cond_dim=0, then fine-tune a "
                                 "cond_dim > 0 config with config.init_from")
  return model_from_torch_state_dict(load_torch_state_dict(path), **kwargs)


def write_checkpoint(pth: str, config, out: str) -> int:
  """Converts the `.pth` at `pth` (the config's model) into a new Orbax checkpoint at `out`
  (local or gs://, absent or empty); returns its step."""
  config_lib.validate(config)
  out_path = runtime.path(out)
  if out_path.exists() and any(out_path.iterdir()):
    raise runtime.UserError(f"--out {out_path} is not empty; write the checkpoint to a new folder")
  model = model_from_pth(runtime.path(pth), config)
  # Every process holds the same weights; as global arrays, all of them take part in the save.
  graphdef, state = nnx.split(model)
  mesh = runtime.make_mesh(config)
  model = nnx.merge(graphdef, jax.device_put(state, sharding.state_shardings(state, mesh)))
  return checkpoint.save_model_checkpoint(out_path, model, config, extra_meta={"source": pth})


def _define_flags():
  """The CLI's flags → the job."""
  pth = flags.DEFINE_string("pth", None, "PyTorch state_dict (.pth, zip format; local or gs://).",
                            required=True)
  out = flags.DEFINE_string("out", None, "Output Orbax checkpoint directory (new; local or "
                            "gs://).", required=True)
  config = job_flags.define_config("Model config (configs/*.py).")
  flags.adopt_module_key_flags(job_flags)  # --help lists the shared flags too.

  def job():
    if config.value is None:
      raise runtime.UserError("--config is required (the model the .pth holds)")
    step = write_checkpoint(pth.value, config.value, out.value)
    if jax.process_index() == 0:
      print(f"done: wrote {runtime.path(out.value)} (step {step}) from {pth.value}", flush=True)

  return job


if __name__ == "__main__":
  runtime.run(_define_flags())
