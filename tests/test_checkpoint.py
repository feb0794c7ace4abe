"""What writing a checkpoint costs: no per-replica slicing ops for small replicated arrays."""

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from conftest import tiny_model
from tarflow_flax import checkpoint

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def test_saving_small_replicated_arrays_compiles_nothing(tmp_path):
  """Orbax's replica-parallel save slices every replicated array once per replica, compiling an op
  for each new shape (8 of a tiny run's 27 s); arrays under REPLICA_PARALLEL_MIN_BYTES per slice
  are written whole by one replica. Shapes unique to this test, so no earlier compile is reused."""
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  model = tiny_model(in_channels=3, img_size=9, patch_size=3, channels=192, num_blocks=2)
  state = jax.device_put(nnx.state(model), NamedSharding(mesh, PartitionSpec()))
  assert max(a.nbytes for a in jax.tree.leaves(state)) // 8 < checkpoint.REPLICA_PARALLEL_MIN_BYTES
  compiles = []

  def on_event(event, duration, **kwargs):
    del duration, kwargs
    if event == BACKEND_COMPILE_EVENT:
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(on_event)
  try:
    with checkpoint.manager(tmp_path) as mngr:
      mngr.save(0, args=ocp.args.Composite(model=ocp.args.StandardSave(state)))
      mngr.wait_until_finished()
  finally:
    jax.monitoring.unregister_event_duration_listener(on_event)
  assert not compiles, f"{len(compiles)} compiles while saving"
  # Otherwise written as Orbax's default handler writes it, per-host array metadata included.
  assert (tmp_path / "0" / "model" / "array_metadatas" / "process_0").exists()
  with checkpoint.manager(tmp_path, create=False) as mngr:
    back = mngr.restore(0, args=ocp.args.Composite(model=ocp.args.StandardRestore(state)))
  for got, want in zip(jax.tree.leaves(back["model"]), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
