"""The Orbax checkpoint layout, and every way of reading it: train resume (`restore_train_state`),
a model for sampling, evaluation, conversion checks and tests (`load_model`), and the weights a
fine-tuning run starts from (`load_init_weights`, for `config.init_from`).

A checkpoint directory is an Orbax `CheckpointManager` root; each step holds the items
  model  nnx.State of the model (its family's; TarFlow: parameters and the prior variance `var`)
  ema    the EMA copy of `model` (trainer, when config.ema_decay > 0)
  opt    the optimizer state (trainer)
  data   the input pipeline's iterator state (trainer)
  meta   JSON: the config (`config`), and where the weights came from
"""

from __future__ import annotations

import json
from typing import Any, Callable, NamedTuple

import jax
import ml_collections
from absl import logging
from etils import epath
import orbax.checkpoint as ocp
# Not exported by orbax.checkpoint: the registry object and the default array metadata store.
from orbax.checkpoint._src.metadata import array_metadata_store
from orbax.checkpoint._src.serialization import type_handler_registry
from flax import nnx

from tarflow_flax import config_lib, models, paths, sharding

# The items of a checkpoint step: a training run saves them all (EMA when config.ema_decay > 0);
# convert and save_model_checkpoint save MODEL and META.
MODEL, EMA, OPT, DATA, META = "model", "ema", "opt", "data", "meta"

# Orbax splits the saving of a replicated array across its replicas, with one slicing op per
# replica and array (each new shape compiled on first use). For small arrays that costs more than
# the write it spreads: 1,100 slices took 8 of a tiny run's 27 s on 8 CPU devices. Arrays whose
# per-replica slice would be under this size are written whole by one replica. Otherwise the
# handler is Orbax's default one (same per-host array metadata store); registered through the
# registry's own `add`, which replaces the default without logging a warning in every job.
REPLICA_PARALLEL_MIN_BYTES = 1 << 20
type_handler_registry.GLOBAL_TYPE_HANDLER_REGISTRY.add(
    jax.Array,
    ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=REPLICA_PARALLEL_MIN_BYTES,
                                   array_metadata_store=array_metadata_store.Store()),
    override=True, ignore_warnings=True)


class CheckpointError(RuntimeError):
  """A checkpoint is missing, unreadable, or does not fit the requested model."""


def manager(directory, *, max_to_keep: int | None = None, async_save: bool = False,
            create: bool = True) -> ocp.CheckpointManager:
  """A CheckpointManager rooted at `directory` (local or gs://; created if needed)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(paths.path(directory), options=options)


def save_model_checkpoint(directory, model: nnx.Module, config, *, step: int = 0,
                          extra_meta: dict[str, Any] | None = None) -> int:
  """Writes `model` (and the config) as step `step` of a new checkpoint directory; returns the
  step. Refuses a directory that already holds checkpoint steps (Orbax would skip the save)."""
  meta = {"config": config.to_json(), **(extra_meta or {})}
  with manager(directory) as mngr:
    if mngr.latest_step() is not None:
      raise CheckpointError(f"{directory} already holds a checkpoint (step "
                            f"{mngr.latest_step()}); write to a new folder")
    mngr.save(step, args=ocp.args.Composite(**{
        MODEL: ocp.args.StandardSave(nnx.state(model)),
        META: ocp.args.JsonSave(meta),
    }))
    mngr.wait_until_finished()
  return step


def read_meta(directory, step: int | None = None) -> tuple[int, dict[str, Any]]:
  """(step, meta) of the latest (or given) step; CheckpointError if there is none."""
  if not epath.Path(directory).exists():
    raise CheckpointError(f"no checkpoint directory at {directory}")
  with manager(directory, create=False) as mngr:
    if step is not None and step not in mngr.all_steps():
      raise CheckpointError(f"{directory} has no step {step} (it has {mngr.all_steps()})")
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint steps under {directory}")
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
    except Exception as e:  # Orbax raises many types for truncated/corrupt files.
      raise CheckpointError(f"checkpoint {directory} step {step}: unreadable meta ({e})") from e
  return step, restored[META]


def config_from_meta(meta: dict[str, Any]) -> ml_collections.ConfigDict:
  """The run's stored config on top of this version's defaults, so that a checkpoint written
  before a key existed still loads (a new key's default keeps the old behaviour)."""
  def merge(node, stored):
    for key, value in stored.items():
      if isinstance(value, dict) and isinstance(node.get(key), ml_collections.ConfigDict):
        merge(node[key], value)
      else:
        node[key] = value
  config = config_lib.base_config()
  merge(config, json.loads(meta["config"]))
  return config


class Restored(NamedTuple):
  """A checkpoint's model, the config it was built from, the mesh it is sharded on and the meta
  (with "step" and "weights": 'ema' or 'model' added)."""
  model: nnx.Module  # The config's model family (TarFlow by default).
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  meta: dict[str, Any]


def load_model(directory, config=None, *, step: int | None = None, use_ema: bool = True,
               mesh: jax.sharding.Mesh | Callable[[Any], jax.sharding.Mesh] | None = None
               ) -> Restored:
  """Restores the config's model from a checkpoint directory (EMA weights when present and `use_ema`).

  config: builds the model from it (default: the config stored in the checkpoint); validated.
  mesh: restore each parameter straight into its sharding on this mesh, or on the mesh that a
  function makes of the config (the jobs pass `runtime.make_mesh`); default: one device.
  """
  step, meta = read_meta(directory, step)
  config = config or config_from_meta(meta)
  config_lib.validate(config)
  if mesh is None:
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1}),
                              jax.devices()[:1])
  elif callable(mesh):
    mesh = mesh(config)
  abstract = nnx.eval_shape(lambda: models.build_model(config))
  graphdef, abstract_state = nnx.split(abstract)
  item = EMA if use_ema and (epath.Path(directory) / str(step) / EMA).exists() else MODEL
  target = sharding.abstract_on(abstract_state, sharding.state_shardings(abstract_state, mesh))
  with manager(directory, create=False) as mngr:
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(
          **{item: ocp.args.StandardRestore(target)}))
    except Exception as e:
      raise CheckpointError(
          f"checkpoint {directory} step {step}: cannot restore '{item}' for this config "
          f"({type(e).__name__}: {str(e).splitlines()[0][:300]})") from e
  return Restored(nnx.merge(graphdef, restored[item]), config, mesh,
                  {**meta, "step": step, "weights": item})


def train_state_args(state, data_state, config, *, save: bool) -> ocp.args.Composite:
  """Composite save/restore args of a training step: a TrainState's model, optimizer state and
  EMA, the input pipeline's state and the config (restore: `state` holds abstract arrays)."""
  pytree = ocp.args.StandardSave if save else ocp.args.StandardRestore
  json_arg = (lambda v: ocp.args.JsonSave(v)) if save else (lambda v: ocp.args.JsonRestore())
  items = {MODEL: pytree(state.model), OPT: pytree(state.opt_state), DATA: json_arg(data_state),
           META: json_arg({"config": config.to_json()})}
  if state.ema is not None:
    items[EMA] = pytree(state.ema)
  return ocp.args.Composite(**items)


def check_same_model(directory, step: int, config) -> None:
  """Refuses to resume a checkpoint written for another model (one line naming the keys)."""
  _, meta = read_meta(directory, step)
  saved = config_from_meta(meta)
  runtime_only = models.family(config).runtime_only_keys
  changed = sorted(k for k in set(saved.model) | set(config.model)
                   if k not in runtime_only
                   and saved.model.get(k) != config.model.get(k))
  if saved.image_size != config.image_size:
    changed.insert(0, "image_size")
  if changed:
    raise config_lib.ConfigError(
        f"the workdir's checkpoint (step {step}) is of another model: it differs in "
        f"{', '.join(changed)}; use a new --workdir, or the config that trained it")


def restore_train_state(mngr: ocp.CheckpointManager, step: int, target, config) -> dict:
  """The items of training step `step` restored into `target` (an abstract TrainState on this
  run's shardings) after checking that the checkpoint is of the config's model."""
  check_same_model(mngr.directory, step, config)
  try:
    return mngr.restore(step, args=train_state_args(target, None, config, save=False))
  except Exception as e:
    raise CheckpointError(
        f"cannot resume from {mngr.directory} step {step}: the step is unreadable "
        f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); delete that step's folder to "
        "resume from the one before it") from e


# -- fine-tuning: another run's (or a converted) weights into a fresh training state -------------

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


def checkpoint_root(path) -> epath.Path:
  """A workdir's `checkpoints/`, or `path` itself when it is a checkpoint root."""
  root = paths.path(path)
  return root / "checkpoints" if (root / "checkpoints").exists() else root


def _init_from_error(path, rule: str) -> config_lib.ConfigError:
  return config_lib.ConfigError(f"config.init_from={path!r}: {rule}")


def _check_compatible(path, item: str, stored: dict[str, Any], fresh: dict[str, Any],
                      neutral_when_absent) -> None:
  """Same parameter names and shapes, except those the checkpoint may lack (neutral ones)."""
  for name, meta in stored.items():
    if name not in fresh:
      raise _init_from_error(path, f"{item} parameter '{name}' {tuple(meta.shape)} does not "
                             "exist in this config's model")
    if tuple(meta.shape) != tuple(fresh[name].shape):
      raise _init_from_error(path, f"{item} parameter '{name}' has shape {tuple(meta.shape)} "
                             f"there, this config's model expects {tuple(fresh[name].shape)}")
  for name in fresh:
    if name not in stored and not any(part in name.split(".") for part in neutral_when_absent):
      raise _init_from_error(path, f"{item} parameter '{name}' {tuple(fresh[name].shape)} is "
                             "missing there")


def load_init_weights(path, model_state, ema_state, *, neutral_when_absent=()):
  """(model, ema) states with the weights of `path`'s latest step (a workdir or a checkpoint root,
  local or gs://), restored straight into the shardings of the given (fresh, sharded) states.

  Parameters must match by name and shape, except those named in `neutral_when_absent` (the
  model family's), which keep their fresh initialisation when the checkpoint lacks them. `ema`
  takes the checkpoint's EMA when it has one, else its model weights; None stays None.
  """
  root = checkpoint_root(path)
  if not root.exists():
    raise _init_from_error(path, "no such directory")
  with manager(root, create=False) as mngr:
    step = mngr.latest_step()
    if step is None:
      raise _init_from_error(path, f"no checkpoint steps under {root}")
    items = [MODEL]
    if ema_state is not None and (root / str(step) / EMA).exists():
      items.append(EMA)
    fresh = _flat_names(model_state)
    targets = {}
    for item in items:
      tree = ocp.StandardCheckpointer().metadata(root / str(step) / item).item_metadata.tree
      _check_compatible(path, item, _flat_names(tree), fresh, neutral_when_absent)
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

  model = replaced(model_state, MODEL)
  ema = None if ema_state is None else replaced(ema_state, EMA if EMA in restored else MODEL)
  logging.info("Fine-tuning from %s step %d (%s); optimizer, data and step start fresh", root,
               step, " + ".join(items))
  return model, ema
