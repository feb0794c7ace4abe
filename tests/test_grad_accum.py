"""Gradient accumulation: k micro-batches give the step of one pass over the same global batch."""

import jax
import numpy as np

from conftest import tiny_config
from tarflow_flax import sharding, steps


def test_two_micro_batches_equal_one_pass_over_the_global_batch():
  config = tiny_config(**{"model.nvp": False, "ema_decay": 0.9, "batch_size": 8,
                          "image_size": 8, "model.patch_size": 2})
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  rng = np.random.default_rng(0)
  batches = [{"image": rng.integers(0, 256, (8, 8, 8, 1), dtype=np.uint8),
              "label": np.zeros((8,), np.int32),
              "index": np.arange(8 * i, 8 * i + 8, dtype=np.uint32)} for i in range(2)]
  initial, runs = None, []
  for k in (1, 2):
    config.grad_accum_steps = k
    trainer, abstract = steps.make_trainer(config)
    shardings = steps.state_shardings(trainer, abstract, mesh)
    if initial is None:
      initial = jax.device_get(steps.init_train_state(trainer, mesh, shardings))
    state = jax.device_put(initial, shardings)  # The step donates its input: a fresh copy.
    step = steps.compile_train_step(trainer, shardings, mesh)
    metrics = []
    for batch in batches:  # The second step also uses the optimizer state the first one left.
      state, m = step(state, jax.device_put(batch, sharding.batch_sharding(mesh)))
      metrics.append(jax.device_get(m))
    runs.append((metrics, jax.device_get(state.model)))
  (whole_metrics, whole), (accum_metrics, accum) = runs
  for want, got in zip(whole_metrics, accum_metrics):
    for key in ("loss", "grad_norm", "logdet", "prior"):
      np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)
  # Updated parameters and the VP prior variance (a mean over the whole global batch).
  jax.tree.map(lambda w, g: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7), whole, accum)
