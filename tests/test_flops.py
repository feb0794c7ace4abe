"""The FLOPs formula against XLA's own count, and the parameter count against the model."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from tarflow_flax import config_lib, flops, models
from tarflow_flax.models import tarflow_config


def _config(**model):
  c = config_lib.base_config()
  c.image_size = 16
  c.model.update(dict(in_channels=3, patch_size=2, channels=128, num_blocks=2,
                      layers_per_block=(2, 1), num_classes=5, **model))
  return c


@pytest.mark.parametrize("nvp", [True, False])
def test_param_count_matches_the_model(nvp):
  c = _config(nvp=nvp)
  model = nnx.eval_shape(lambda: models.build_model(c))
  counted = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert flops.num_params(c) == counted


def _xla_forward_flops(c):
  # Unrolled layers: XLA's cost analysis counts a scan body once, not once per iteration.
  c.model.scan_layers = False
  model = models.TarFlow(**tarflow_config.model_kwargs(c), rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)[0])
  x = jnp.zeros((1, c.image_size, c.image_size, c.model.in_channels))
  cost = fwd.lower(state, x).compile().cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)["flops"]


def test_forward_flops_track_xla_and_count_causal_attention_as_half():
  small, large = _config(), _config()
  large.image_size = 32
  t_small, t_large = 64, 256
  ours = [flops.forward_flops_per_image(small), flops.forward_flops_per_image(large)]
  xla = [_xla_forward_flops(small), _xla_forward_flops(large)]
  # XLA adds the masked half of attention and elementwise work (norms, softmax, GELU).
  for o, x in zip(ours, xla):
    assert o <= x <= 1.3 * o
  # F(T)/T = linear + quadratic·T: XLA runs the full T×T attention, we count half of it.
  quad_ours = (ours[1] / t_large - ours[0] / t_small) / (t_large - t_small)
  quad_xla = (xla[1] / t_large - xla[0] / t_small) / (t_large - t_small)
  assert 0.45 <= quad_ours / quad_xla <= 0.55


def test_peak_lookup():
  assert flops.peak_tflops("TPU v5 lite") == 197.0
  assert flops.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
  assert flops.peak_tflops("cpu") is None


def test_mfu_counts_model_flops_and_hfu_the_remat_recompute():
  plain, remat = _config(), _config(remat=True)
  forward = flops.forward_flops_per_image(plain)
  # MFU's numerator is 3× forward whatever remat does; HFU adds remat's recomputed forward.
  assert flops.train_flops_per_image(plain) == flops.train_flops_per_image(remat) == 3 * forward
  assert flops.hardware_train_flops_per_image(plain) == 3 * forward
  assert flops.hardware_train_flops_per_image(remat) == 4 * forward
  # 'save_matmuls' recomputes only QKᵀ and PV: 2·T²·C per layer (T=64, C=128, 2 + 1 layers).
  save_matmuls = _config(remat=True, remat_policy="save_matmuls")
  assert flops.train_flops_per_image(save_matmuls) == 3 * forward
  assert flops.hardware_train_flops_per_image(save_matmuls) == 3 * forward + 3 * 2 * 64**2 * 128
  # 100 images/s of 1 TFLOP each on 4 chips of 200 TFLOP/s peak: 12.5 %.
  assert flops.utilization(1e12, 100.0, 200.0, 4) == pytest.approx(0.125)


def test_block_step_flops_match_one_layer_by_hand():
  c = _config()
  tokens, c_width, token_dim = 64, 128, 12
  one_token = flops.block_step_flops(c, num_layers=1, num_new=1)
  by_hand = (2 * token_dim * c_width + 2 * c_width * 2 * token_dim + 24 * c_width**2 +
             4 * tokens * c_width)
  assert one_token == by_hand
  assert flops.block_step_flops(c, 2, 8) == 8 * (2 * by_hand - 2 * token_dim * c_width -
                                                 4 * token_dim * c_width)


def test_parameter_count_includes_adaln():
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  for cond_dim in (0, 3):
    config = tiny_config(**{"model.cond_dim": cond_dim, "model.num_classes": 10})
    model = nnx.eval_shape(lambda c=config: models.build_model(c))
    counted = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert counted == flops.num_params(config), cond_dim
