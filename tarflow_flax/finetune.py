"""Fine-tuning: a fresh run that starts from another run's (or a converted) model weights.

`config.init_from` names a training workdir (its `checkpoints/` is used) or a checkpoint root such
as `python -m tarflow_flax.convert`'s output, local or gs://. Its latest step's `model` item (and
`ema`, when both it and this run keep one) replaces the seed-initialised weights; the optimizer
state, the data iterator and the step counter stay fresh. Parameters must match by name and shape,
except the AdaLN ones (`cond_embed`, `cond_null`, `adaln`): absent there, they keep their fresh
init, which is neutral (zero modulation), so an unconditional model can be fine-tuned into a
conditioned one. The trainer calls this only when its own workdir holds no checkpoint (resume
takes precedence).
"""

from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from tarflow_flax import checkpoint, config_lib, runtime, steps

# Parameters a checkpoint may lack: their fresh initialisation leaves the model's function as is.
NEUTRAL_WHEN_ABSENT = ("cond_embed", "cond_null", "adaln")


def _key_name(key) -> str:
  for attr in ("key", "idx", "name"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _name(path) -> str:
  """'blocks.0.proj_in.kernel' for a pytree key path of an nnx.State or a stored tree."""
  names = [_key_name(k) for k in path]
  if names and names[-1] == "value":  # How nnx Variables appear once stored.
    names = names[:-1]
  return ".".join(names)


def _flat_names(tree) -> dict[str, Any]:
  return {_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def checkpoint_root(path: str) -> epath.Path:
  """A workdir's `checkpoints/`, or `path` itself when it is a checkpoint root."""
  root = runtime.path(path)
  return root / "checkpoints" if (root / "checkpoints").exists() else root


def _fail(path, rule: str):
  raise config_lib.ConfigError(f"config.init_from={path!r}: {rule}")


def _check_compatible(path, item: str, stored: dict[str, Any], fresh: dict[str, Any]) -> None:
  """Same parameter names and shapes, except AdaLN parameters the checkpoint may lack."""
  for name, meta in stored.items():
    if name not in fresh:
      _fail(path, f"{item} parameter '{name}' {tuple(meta.shape)} does not exist in this "
            "config's model")
    if tuple(meta.shape) != tuple(fresh[name].shape):
      _fail(path, f"{item} parameter '{name}' has shape {tuple(meta.shape)} there, this config's "
            f"model expects {tuple(fresh[name].shape)}")
  for name in fresh:
    if name not in stored and not any(part in name.split(".") for part in NEUTRAL_WHEN_ABSENT):
      _fail(path, f"{item} parameter '{name}' {tuple(fresh[name].shape)} is missing there")


def load_weights(state: steps.TrainState, path: str) -> steps.TrainState:
  """`state` (freshly initialised, sharded) with model (+ EMA) weights from `path`'s latest step."""
  root = checkpoint_root(path)
  if not root.exists():
    _fail(path, "no such directory")
  with checkpoint.manager(root, create=False) as mngr:
    step = mngr.latest_step()
    if step is None:
      _fail(path, f"no checkpoint steps under {root}")
    items = [checkpoint.MODEL]
    if state.ema is not None and (root / str(step) / checkpoint.EMA).exists():
      items.append(checkpoint.EMA)
    fresh = _flat_names(state.model)
    targets = {}
    for item in items:
      tree = ocp.StandardCheckpointer().metadata(root / str(step) / item).item_metadata.tree
      _check_compatible(path, item, _flat_names(tree), fresh)
      # Restore straight into this run's shardings, in the stored tree's own structure.
      targets[item] = jax.tree_util.tree_map_with_path(
          lambda p, meta: jax.ShapeDtypeStruct(meta.shape, meta.dtype,
                                               sharding=fresh[_name(p)].sharding), tree)
    restored = mngr.restore(step, args=ocp.args.Composite(
        **{item: ocp.args.StandardRestore(target) for item, target in targets.items()}))

  def replaced(tree, item):
    values = _flat_names(restored[item])
    names = iter(_flat_names(tree))
    return jax.tree.map(lambda leaf: values.get(next(names), leaf), tree)

  model = replaced(state.model, checkpoint.MODEL)
  ema = state.ema
  if ema is not None:  # The checkpoint's EMA if it has one, else its model weights.
    ema = replaced(ema, checkpoint.EMA if checkpoint.EMA in restored else checkpoint.MODEL)
  logging.info("Fine-tuning from %s step %d (%s); optimizer, data and step start fresh", root,
               step, " + ".join(items))
  return state.replace(model=model, ema=ema)


def init_train_state(trainer: steps.Trainer, mesh, shardings) -> steps.TrainState:
  """The trainer's fresh state: seed initialisation, then `config.init_from`'s weights if set."""
  state = steps.init_train_state(trainer, mesh, shardings)
  if trainer.config.init_from:
    state = load_weights(state, trainer.config.init_from)
  return state
