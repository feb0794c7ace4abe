"""Device mesh, and the one place where logical axis names become mesh axes.

Parameters carry logical names (see models/transformer.py). FSDP shards the `embed` dimension of
every large matrix over the `fsdp` mesh axis; everything else is replicated. The batch is split over
both mesh axes (`data` × `fsdp`), so an fsdp-only mesh is also pure data parallelism for activations.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXES = ("data", "fsdp")

# logical axis name → mesh axis (None: replicated). Names not listed are replicated.
LOGICAL_RULES = (
    ("embed", "fsdp"),
    ("batch", DATA_AXES),
    ("layers", None),
    ("mlp", None),
    ("qkv", None),
    ("heads", None),
    ("patch", None),
    ("tokens", None),
    ("classes", None),
    ("norm", None),
)


def make_mesh(mesh_config, devices=None) -> jax.sharding.Mesh:
  """A (data, fsdp) mesh; -1 on one axis takes the devices left over by the other."""
  devices = jax.devices() if devices is None else devices
  sizes = {"data": mesh_config.data, "fsdp": mesh_config.fsdp}
  free = [k for k, v in sizes.items() if v == -1]
  if len(free) > 1:
    raise ValueError("config.mesh: at most one of data/fsdp may be -1")
  fixed = int(np.prod([v for v in sizes.values() if v != -1]))
  if free:
    if len(devices) % fixed:
      given = " × ".join(f"{k}={v}" for k, v in sizes.items() if v != -1)
      raise ValueError(f"config.mesh: {given} needs a multiple of {fixed} devices, not "
                       f"{len(devices)}")
    sizes[free[0]] = len(devices) // fixed
  if sizes["data"] * sizes["fsdp"] != len(devices):
    raise ValueError(f"config.mesh: data={sizes['data']} × fsdp={sizes['fsdp']} must equal the "
                     f"{len(devices)} devices")
  # Not jax.make_mesh: it lets an axis split a physical torus axis only on v5e, so fsdp=4 on a
  # v6e 8x8 slice failed. Splitting is tried only when no whole-axis assignment exists, so every
  # mesh make_mesh could build comes out the same.
  grid = mesh_utils.create_device_mesh((sizes["data"], sizes["fsdp"]), devices,
                                       allow_split_physical_axes=True)
  return jax.sharding.Mesh(grid, DATA_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2)


def data_parallel_size(mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in DATA_AXES]))


def _spec_for(names, shape, mesh) -> P:
  """PartitionSpec from logical names; a dimension the mesh axis does not divide is replicated."""
  rules = dict(LOGICAL_RULES)
  spec = []
  for name, size in zip(names, shape):
    axis = rules.get(name)
    axes = (axis,) if isinstance(axis, str) else (axis or ())
    mesh_size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    spec.append(axis if axes and size % mesh_size == 0 else None)
  return P(*spec)


def logical_spec(names, shape, mesh=None) -> P:
  """PartitionSpec of an array with logical axis `names` on `mesh` (default: the current abstract
  mesh, e.g. inside a step traced by `steps.compile_train_step`); None names are replicated."""
  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  return _spec_for(names, shape, mesh)


def constrain(x, names):
  """Activation sharding constraint by logical axis names; a no-op when no mesh is set."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_spec(names, x.shape,
                                                                              mesh)))


def state_shardings(state, mesh):
  """NamedShardings for an nnx.State (or any pytree of Variables / arrays) on `mesh`."""

  def leaf_sharding(x):
    if not isinstance(x, nnx.Variable):
      return NamedSharding(mesh, P())
    names = x.get_metadata().get("out_sharding")
    spec = _spec_for(names, x.shape, mesh) if names and len(names) == len(x.shape) else P()
    return x.replace(NamedSharding(mesh, spec))  # Same tree structure as the state.

  return jax.tree.map(leaf_sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def abstract_on(tree, shardings):
  """ShapeDtypeStructs of `tree`'s arrays carrying `shardings` (same structure): the target that
  Orbax restores straight into, or the arguments a step is lowered with."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree,
                      shardings)


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) axis split over data × fsdp."""
  return NamedSharding(mesh, P(DATA_AXES))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
