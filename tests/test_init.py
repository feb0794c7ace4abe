"""A fresh model follows the reference's initialisation (docs/numerics.md §11), not the identity.

Reference: every Linear torch's default, weight and bias ~ U(±1/√fan_in), except proj_out whose
weight is zero (its bias keeps the default); pos_embed and class_embed N(0, 0.01²); LayerNorm
weight 1, bias 0. Each group's sample mean and variance must lie within 5 standard errors of
those distributions' moments.
"""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from conftest import random_images, rel_err
from tarflow_flax import models

CHANNELS, TOKEN_DIM = 128, 3 * 4 * 4


def _fresh():
  return models.TarFlow(in_channels=3, img_size=16, patch_size=4, channels=CHANNELS,
                        num_blocks=2, layers_per_block=2, num_classes=10, rngs=nnx.Rngs(0))


def _uniform(fan_in):
  bound = fan_in**-0.5
  return 0.0, bound**2 / 3, bound**4 / 5  # mean, variance, 4th moment


def _normal(std):
  return 0.0, std**2, 3 * std**4


REFERENCE = {  # parameter name suffix → (mean, variance, 4th central moment)
    "proj_in.kernel": _uniform(TOKEN_DIM), "proj_in.bias": _uniform(TOKEN_DIM),
    "attention.qkv.kernel": _uniform(CHANNELS), "attention.qkv.bias": _uniform(CHANNELS),
    "attention.proj.kernel": _uniform(CHANNELS), "attention.proj.bias": _uniform(CHANNELS),
    "mlp.up.kernel": _uniform(CHANNELS), "mlp.up.bias": _uniform(CHANNELS),
    "mlp.down.kernel": _uniform(4 * CHANNELS), "mlp.down.bias": _uniform(4 * CHANNELS),
    "proj_out.bias": _uniform(CHANNELS),
    "pos_embed": _normal(1e-2), "class_embed": _normal(1e-2),
}
CONSTANT = {"proj_out.kernel": 0.0, "norm.scale": 1.0, "norm.bias": 0.0, "var": 1.0}


def test_every_parameter_group_matches_the_reference_distribution():
  groups: dict[str, list] = {}
  for path, value in nnx.to_flat_state(nnx.state(_fresh())):
    name = ".".join(str(p) for p in path if not isinstance(p, int))
    key = next((k for k in list(REFERENCE) + list(CONSTANT) if name.endswith(k)), None)
    assert key is not None, f"no reference distribution for {name}"
    groups.setdefault(key, []).append(np.asarray(value.get_value()).ravel())
  assert set(groups) == set(REFERENCE) | set(CONSTANT)
  for key, constant in CONSTANT.items():
    assert np.all(np.concatenate(groups[key]) == constant), key
  for key, (mean, var, m4) in REFERENCE.items():
    v = np.concatenate(groups[key]).astype(np.float64)
    n = v.size
    assert abs(v.mean() - mean) <= 5 * np.sqrt(var / n), (key, v.mean())
    assert abs(v.var() - var) <= 5 * np.sqrt((m4 - var**2) / n), (key, v.var(), var)


def test_a_fresh_model_is_not_the_identity():
  model = _fresh()
  x = random_images(4, model)
  z, logdets, _ = model(x)
  assert rel_err(z, model.patchify(x)) > 1e-2
  assert float(jnp.abs(logdets).min()) > 1e-3
