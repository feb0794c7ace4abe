"""AdaLN conditioning on a continuous vector (model.cond_dim): flow properties, guidance, data."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import GOLDEN_DIR, random_images, rel_err, tiny_config, tiny_model
from tarflow_flax import config_lib, convert, models, sampling, sharding
from tarflow_flax import input_pipeline as data_lib
from tarflow_flax.sampling import sequential

Y_CONT = jnp.array([[0.5, -1.0], [2.0, 0.3], [np.nan, np.nan], [-1.5, 1.0]])


def cond_model(*, cond_dim=2, num_classes=3, seed=0, **kwargs):
  """tiny_model with AdaLN, its zero-initialised modulation randomised so that it acts."""
  model = tiny_model(cond_dim=cond_dim, num_classes=num_classes, seed=seed, **kwargs)
  key = jax.random.key(seed + 11)
  for i, block in enumerate(model.blocks):
    k1, k2 = jax.random.split(jax.random.fold_in(key, i))
    kernel = block.layers.adaln.kernel
    kernel[...] = 0.5 * jax.random.normal(k1, kernel.shape) / np.sqrt(kernel.shape[1])
    block.layers.adaln.bias[...] = 0.1 * jax.random.normal(k2, block.layers.adaln.bias.shape)
  return model


def test_no_parameters_without_adaln_and_a_fresh_adaln_changes_nothing():
  plain = models.TarFlow(in_channels=1, img_size=8, patch_size=2, channels=64, num_blocks=2,
                         layers_per_block=2, rngs=nnx.Rngs(0))
  names = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(plain))}
  assert not [n for n in names if "cond" in n or "adaln" in n]
  fresh = models.TarFlow(in_channels=1, img_size=8, patch_size=2, channels=64, num_blocks=2,
                         layers_per_block=2, cond_dim=2, rngs=nnx.Rngs(0))
  x = random_images(4, fresh)
  z_none, ld_none, _ = fresh(x)
  z, ld, _ = fresh(x, None, Y_CONT)
  np.testing.assert_array_equal(z, z_none)
  np.testing.assert_array_equal(ld, ld_none)


@pytest.mark.parametrize("block_index", [0, 1])
def test_adaln_block_is_causal(block_index):
  model = cond_model(layers_per_block=2, scale=0.5)
  block = model.blocks[block_index]
  t, cp = model.num_tokens, model.token_dim
  x = jax.random.normal(jax.random.key(3), (1, t, cp))
  y_cont = Y_CONT[:1]
  jac = jax.jacrev(lambda v: block(v[None], jnp.array([1]), y_cont)[0][0])(x[0])
  order = np.arange(t)[::-1] if block.flip else np.arange(t)
  jac = np.asarray(jac)[order][:, :, order]  # Block order on both sides.
  for out_t in range(t):
    assert np.all(jac[out_t, :, out_t + 1:, :] == 0), f"token {out_t} depends on a later token"
    own = jac[out_t, :, out_t, :]
    assert np.all(own[~np.eye(cp, dtype=bool)] == 0), "own-token part is not elementwise"
  assert np.all(jac[0, :, 0, :] == np.eye(cp)), "token 0 must pass through unchanged"


def test_condition_changes_the_flow_and_inverse_is_exact():
  model = cond_model(in_channels=3)
  x = random_images(4, model)
  y = jnp.array([0, 2, -1, 1])
  z, logdets, _ = model(x, y, Y_CONT)
  z_other, _, _ = model(x, y, Y_CONT[::-1])
  assert rel_err(z_other, z) > 1e-3  # The continuous condition acts.
  x_rec = sequential.reverse(model, z / jnp.sqrt(model.var[...]), y, y_cont=Y_CONT)
  np.testing.assert_allclose(x_rec, x, atol=1e-5, rtol=0)
  # NaN rows select the null embedding, the same as y_cont=None.
  z_null, _, _ = model(x, y, jnp.full_like(Y_CONT, np.nan))
  np.testing.assert_array_equal(z_null, model(x, y)[0])


def test_adaln_logdet_equals_bruteforce_jacobian():
  model = cond_model(img_size=4, num_blocks=3, layers_per_block=2, scale=0.5)
  x = random_images(2, model)
  y, y_cont = jnp.array([1, 2]), Y_CONT[:2]
  _, logdets, _ = model(x, y, y_cont)
  num_dims = x[0].size
  for i in range(2):
    flow = lambda image, i=i: model(image[None], y[i:i + 1], y_cont[i:i + 1])[0].reshape(-1)
    jacobian = jax.jacfwd(flow)(x[i]).reshape(num_dims, num_dims)
    sign, logabsdet = jnp.linalg.slogdet(jacobian)
    assert sign != 0
    np.testing.assert_allclose(num_dims * logdets[i], logabsdet, rtol=1e-4, atol=1e-4)


def test_nan_rows_train_the_null_embedding_with_finite_gradients():
  model = cond_model()
  x = random_images(4, model)

  def loss(model):
    z, logdets, _ = model(x, None, Y_CONT)
    return jnp.mean(z**2) - jnp.mean(logdets)

  grads = nnx.grad(loss)(model)
  leaves = jax.tree.leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert float(jnp.abs(grads.blocks[0].cond_null[...]).max()) > 0  # Row 2 (NaN) reaches it.


@pytest.mark.parametrize("guidance,guide_what,attn_temp", [(0.0, "ab", 1.0), (1.5, "ab", 0.7),
                                                           (1.0, "a", 1.0)])
def test_guided_parallel_samplers_equal_sequential(guidance, guide_what, attn_temp):
  model = cond_model(in_channels=3)
  noise = jax.random.normal(jax.random.key(5), (4, model.num_tokens, model.token_dim))
  y = jnp.array([0, 2, 1, 1])
  y_cont = jnp.nan_to_num(Y_CONT)  # No null rows: the null embedding enters only by guidance.
  kwargs = dict(guidance=guidance, guide_what=guide_what, attn_temp=attn_temp, y_cont=y_cont)
  seq, _ = sampling.sample(model, noise, y, method="sequential", **kwargs)
  for method in ("jacobi", "gs_jacobi"):
    par, _ = sampling.sample(model, noise, y, method=method, tol=0.0, **kwargs)
    assert rel_err(par, seq) <= 1e-5, method
  if guidance:  # Guidance contrasts the condition with the null embedding: it must matter.
    unguided, _ = sampling.sample(model, noise, y, y_cont=y_cont)
    assert rel_err(seq, unguided) > 1e-4
    nulled = nnx.clone(model)
    for block in nulled.blocks:
      block.cond_null[...] = block.cond_null[...] + 0.5
    assert rel_err(sampling.sample(nulled, noise, y, **kwargs)[0], seq) > 1e-4


def test_sharded_equals_single_device():
  model = cond_model(in_channels=3)
  x = random_images(8, model)
  y = jnp.arange(8) % 3
  y_cont = jax.random.normal(jax.random.key(2), (8, 2))
  z, logdets, _ = model(x, y, y_cont)
  noise = jax.random.normal(jax.random.key(5), (8, model.num_tokens, model.token_dim))
  samples = sequential.reverse(model, noise, y, y_cont=y_cont, guidance=1.0)

  mesh = sharding.make_mesh(tiny_config().mesh)
  graphdef, state = nnx.split(model)
  placed = nnx.merge(graphdef, jax.device_put(state, sharding.state_shardings(state, mesh)))
  put = lambda a: jax.device_put(a, sharding.batch_sharding(mesh))
  z_s, logdets_s, _ = nnx.jit(lambda m, a, b, c: m(a, b, c))(placed, put(x), put(y), put(y_cont))
  assert len(z_s.sharding.device_set) == 8
  np.testing.assert_allclose(z_s, z, atol=1e-5, rtol=0)
  np.testing.assert_allclose(logdets_s, logdets, atol=1e-6, rtol=0)
  samples_s = sequential.reverse(placed, put(noise), put(y), y_cont=put(y_cont), guidance=1.0)
  np.testing.assert_allclose(samples_s, samples, atol=1e-5, rtol=0)


def test_zero_initialised_adaln_keeps_the_golden_numbers():
  path = os.path.join(GOLDEN_DIR, "uncond_small.npz")
  if not os.path.exists(path):
    pytest.fail(f"missing {path}")  # A required input: fail, never skip.
  d = np.load(path)
  cfg = json.loads(str(d["config"]))
  state = {k[len("param/"):]: d[k].astype(np.float32) for k in d.files if k.startswith("param/")}
  reference = convert.model_from_torch_state_dict(state, **cfg)
  model = models.TarFlow(**cfg, cond_dim=3, rngs=nnx.Rngs(0))
  flat = dict(nnx.to_flat_state(nnx.state(model)))
  for path_, value in nnx.to_flat_state(nnx.state(reference)):
    flat[path_].set_value(value.get_value())
  model = nnx.merge(nnx.graphdef(model), nnx.from_flat_state(flat))
  perm = convert.token_permutation(cfg["in_channels"], cfg["patch_size"])
  y_cont = jnp.array([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0], [np.nan] * 3, [-1.0, 0.2, 0.1]])
  z, logdets, _ = model(jnp.asarray(np.transpose(d["x"], (0, 2, 3, 1))), None, y_cont)
  assert rel_err(z, d["z"][..., perm]) <= 1e-5
  np.testing.assert_allclose(logdets, d["logdets"], atol=1e-5, rtol=0)
  sample = sequential.reverse(model, jnp.asarray(d["noise"][..., perm]), y_cont=y_cont)
  assert rel_err(sample, np.transpose(d["sample_g0"], (0, 2, 3, 1))) <= 1e-5


def test_pipeline_reads_the_continuous_condition():
  config = tiny_config(**{"model.cond_dim": 1, "data.cond_key": "ink", "batch_size": 64,
                          "data.drop_label": 0.25})
  batch = next(data_lib.create_train_iterator(config, process_index=0, process_count=1))
  cond = batch["cond"]
  assert cond.shape == (64, 1) and cond.dtype == np.float32
  dropped = np.isnan(cond[:, 0])
  assert 4 <= dropped.sum() <= 32  # About a quarter dropped to the null marker.
  # The feature is the digit's standardised ink: it tracks the image's mean brightness.
  brightness = batch["image"].reshape(64, -1).mean(axis=1)
  assert np.corrcoef(cond[~dropped, 0], brightness[~dropped])[0, 1] > 0.9


@pytest.mark.parametrize("overrides,match", [
    ({"model.cond_dim": 1}, r"data\.cond_key=None: must name a dataset feature"),
    ({"data.cond_key": "ink"}, r"data\.cond_key='ink': needs model\.cond_dim > 0"),
    ({"model.cond_dim": -1, "data.cond_key": "ink"}, r"model\.cond_dim=-1: must be >= 0"),
])
def test_config_validation(overrides, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(tiny_config(**overrides))


def test_sample_job_parses_condition_values():
  from tarflow_flax.sampling import batches  # pylint: disable=g-import-not-at-top
  vectors = batches.parse_cond(["1", "-0.5", "2", "0"], cond_dim=2)
  np.testing.assert_array_equal(vectors, [[1.0, -0.5], [2.0, 0.0]])
  np.testing.assert_array_equal(batches.conditions(vectors, 1, 3), [[2, 0], [1, -0.5], [2, 0]])
  assert batches.parse_cond(None, cond_dim=2) is None
  with pytest.raises(ValueError, match="not a multiple of model.cond_dim=2"):
    batches.parse_cond(["1", "2", "3"], cond_dim=2)
  with pytest.raises(ValueError, match=r"model\.cond_dim=0"):
    batches.parse_cond(["1"], cond_dim=0)
