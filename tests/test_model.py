"""TarFlow model properties: invertibility, exact log-det, causality, layer-stack equivalences."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import random_images, rel_err, tiny_model
from tarflow_flax import losses, models
from tarflow_flax.models import transformer
from tarflow_flax.sampling import guidance, sequential


@pytest.mark.parametrize("nvp,num_classes,num_blocks,layers", [
    (True, 0, 3, 1),
    (False, 0, 2, 3),
    (True, 5, 3, 3),
    (False, 4, 1, 2),
    (True, 3, 2, (3, 1)),  # Deep-shallow: one depth per block.
])
def test_reverse_inverts_forward(nvp, num_classes, num_blocks, layers):
  model = tiny_model(nvp=nvp, num_classes=num_classes, num_blocks=num_blocks,
                     layers_per_block=layers, in_channels=3, img_size=8, patch_size=2)
  x = random_images(3, model)
  y = jnp.array([0, -1, num_classes - 1]) if num_classes else None
  z, logdets, _ = model(x, y)
  assert float(jnp.std(logdets)) > 0 or not nvp  # Blocks are far from the identity.
  assert rel_err(z, model.patchify(x)) > 1e-2
  x_rec = sequential.reverse(model, z / jnp.sqrt(model.var[...]), y)
  np.testing.assert_allclose(x_rec, x, atol=1e-5, rtol=0)


def test_logdet_equals_bruteforce_jacobian():
  model = tiny_model(in_channels=1, img_size=4, patch_size=2, num_blocks=3, layers_per_block=2,
                     scale=0.5)
  x = random_images(2, model)

  def flow(image):
    z, _, _ = model(image[None])
    return z.reshape(-1)

  _, logdets, _ = model(x)
  num_dims = x[0].size
  for i in range(x.shape[0]):
    jacobian = jax.jacfwd(flow)(x[i]).reshape(num_dims, num_dims)
    sign, logabsdet = jnp.linalg.slogdet(jacobian.astype(jnp.float64)
                                         if jax.config.jax_enable_x64 else jacobian)
    assert sign != 0
    # The model's log-det is a per-dimension mean.
    np.testing.assert_allclose(num_dims * logdets[i], logabsdet, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("block_index", [0, 1])
def test_block_is_causal_in_its_token_order(block_index):
  model = tiny_model(in_channels=1, img_size=8, patch_size=2, num_blocks=2, layers_per_block=2,
                     scale=0.5)
  block = model.blocks[block_index]
  t, cp = model.num_tokens, model.token_dim
  x = jax.random.normal(jax.random.key(3), (1, t, cp))
  jac = jax.jacrev(lambda v: block(v[None])[0][0])(x[0])  # (T, Cp, T, Cp), image order
  order = np.arange(t)[::-1] if block.flip else np.arange(t)
  jac = np.asarray(jac)[order][:, :, order]  # Block order on both sides.
  for out_t in range(t):
    later = jac[out_t, :, out_t + 1:, :]
    assert np.all(later == 0), f"token {out_t} depends on a later token"
    own = jac[out_t, :, out_t, :]
    assert np.all(own[~np.eye(cp, dtype=bool)] == 0), "own-token part is not elementwise"
    if out_t > 0:
      assert np.abs(jac[out_t, :, :out_t, :]).max() > 0, "no dependence on earlier tokens"
  assert np.all(jac[0, :, 0, :] == np.eye(cp)), "token 0 must pass through unchanged"


def test_scan_and_unrolled_layer_stacks_agree():
  kwargs = dict(in_channels=3, img_size=8, patch_size=2, num_blocks=2, layers_per_block=3,
                num_classes=4)
  scanned = tiny_model(**kwargs)
  unrolled = tiny_model(scan_layers=False, **kwargs)
  x, y = random_images(2, scanned), jnp.array([1, -1])
  z1, ld1, _ = scanned(x, y)
  z2, ld2, _ = unrolled(x, y)
  np.testing.assert_allclose(z1, z2, rtol=0, atol=1e-6)
  np.testing.assert_allclose(ld1, ld2, rtol=0, atol=1e-6)


def _grads(model, x):
  def loss_fn(m):
    z, logdets, _ = m(x)
    return losses.nll_loss(z, logdets)
  return jax.tree.leaves(nnx.state(nnx.grad(loss_fn)(model), nnx.Param))


@pytest.mark.parametrize("policy", transformer.REMAT_POLICIES)
def test_remat_gives_identical_gradients(policy):
  plain = tiny_model(layers_per_block=2)
  remat = tiny_model(layers_per_block=2, remat=True, remat_policy=policy)
  x = random_images(2, plain)
  for g1, g2 in zip(_grads(plain, x), _grads(remat, x)):
    np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-7)


def test_save_matmuls_recomputes_only_the_attention_matmuls():
  def gradient_matmuls(**remat):
    model = tiny_model(layers_per_block=2, scan_layers=False, attention="xla", **remat)
    graphdef, state = nnx.split(model)
    x = random_images(2, model)

    def loss_fn(state):
      z, logdets, _ = nnx.merge(graphdef, state)(x)
      return losses.nll_loss(z, logdets)
    return jax.jit(jax.grad(loss_fn)).lower(state).as_text().count("stablehlo.dot_general")

  layers = 2 * 2
  plain = gradient_matmuls()
  # The recomputed forward of each layer: QKᵀ and PV only; 'full' also redoes its Linears.
  assert gradient_matmuls(remat=True, remat_policy="save_matmuls") == plain + 2 * layers
  assert gradient_matmuls(remat=True, remat_policy="full") > plain + 2 * layers


def test_bfloat16_compute_within_bf16_tolerance():
  f32 = tiny_model(in_channels=3, layers_per_block=2)
  bf16 = tiny_model(in_channels=3, layers_per_block=2, dtype="bfloat16")
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf16)))
  x = random_images(4, f32)
  z32, ld32, _ = f32(x)
  z16, ld16, _ = bf16(x)
  assert z16.dtype == jnp.float32 and ld16.dtype == jnp.float32
  assert rel_err(z16, z32) < 3e-2
  assert rel_err(ld16, ld32) < 3e-2
  assert abs(float(losses.nll_loss(z16, ld16) - losses.nll_loss(z32, ld32))) < 1e-2
  sample = sequential.reverse(bf16, z16)
  assert rel_err(sample, x) < 5e-2


def test_prior_update_lerps_toward_batch_mean_of_z_squared():
  model = tiny_model(nvp=False)
  x = random_images(4, model)
  z, logdets, _ = model(x)
  np.testing.assert_array_equal(logdets, 0.0)
  before = np.asarray(model.var[...])
  model.update_prior(z)
  expected = before + 0.1 * (np.mean(np.asarray(z)**2, axis=0) - before)
  np.testing.assert_allclose(model.var[...], expected, rtol=1e-6)


def test_dropped_label_uses_mean_class_embedding():
  model = tiny_model(num_classes=3)
  x = random_images(2, model)
  z_none, _, _ = model(x, None)
  z_drop, _, _ = model(x, jnp.array([-1, -1]))
  z_cls, _, _ = model(x, jnp.array([2, -1]))
  np.testing.assert_array_equal(z_none, z_drop)
  np.testing.assert_array_equal(z_cls[1], z_drop[1])
  assert rel_err(z_cls[0], z_drop[0]) > 1e-4


def test_guidance_changes_samples_and_annealing_weights():
  model = tiny_model(num_classes=3)
  noise = jax.random.normal(jax.random.key(0), (2, model.num_tokens, model.token_dim))
  y = jnp.array([0, 2])
  plain = sequential.reverse(model, noise, y)
  for kwargs in [dict(guidance=1.5), dict(guidance=1.5, guide_what="a"),
                 dict(guidance=1.5, guide_what="b"), dict(guidance=1.5, annealed_guidance=True),
                 dict(guidance=0.5, attn_temp=0.5)]:
    assert rel_err(sequential.reverse(model, noise, y, **kwargs), plain) > 1e-4, kwargs
  # guide_what='' or guidance 0 is no guidance at all, whatever the temperature.
  np.testing.assert_array_equal(sequential.reverse(model, noise, y, guidance=1.5, guide_what=""),
                                plain)
  np.testing.assert_array_equal(sequential.reverse(model, noise, y, attn_temp=0.3), plain)
  w = guidance.weights(5, 2.0, "ab", annealed=True)
  np.testing.assert_allclose(w, [0.5, 1.0, 1.5, 2.0])


@pytest.mark.parametrize("kwargs,message", [
    (dict(channels=96), "multiple of the head width 64"),
    (dict(img_size=10, patch_size=4), "divisible by model.patch_size"),
    (dict(layers_per_block=(1, 2, 3)), "one per block"),
    (dict(dtype="float16"), "model.dtype"),
    (dict(remat=True, remat_policy="dots"), "model.remat_policy"),
])
def test_bad_model_config_is_refused(kwargs, message):
  base = dict(in_channels=1, img_size=8, patch_size=2, channels=64, num_blocks=2,
              layers_per_block=1)
  with pytest.raises(models.ModelConfigError, match=message):
    models.TarFlow(**{**base, **kwargs}, rngs=nnx.Rngs(0))


def test_bad_inputs_get_clear_errors():
  model = tiny_model(num_classes=3, in_channels=3)
  with pytest.raises(ValueError, match=r"expected images of shape \(N, 8, 8, 3\)"):
    model(jnp.zeros((2, 8, 8, 1)))
  with pytest.raises(ValueError, match="NHWC"):
    model(jnp.zeros((2, 3, 8, 8)))
  with pytest.raises(ValueError, match=r"label 3 outside \[-1, 3\)"):
    model(jnp.zeros((2, 8, 8, 3)), jnp.array([0, 3]))
  with pytest.raises(ValueError, match=r"label -2 outside"):
    sequential.reverse(model, jnp.zeros((2, model.num_tokens, model.token_dim)),
                       jnp.array([-2, 0]))
  with pytest.raises(ValueError, match="expected tokens of shape"):
    sequential.reverse(model, jnp.zeros((2, model.num_tokens, 5)))
  with pytest.raises(ValueError, match="guide_what"):
    sequential.reverse(model, jnp.zeros((2, model.num_tokens, model.token_dim)), guidance=1.0,
                       guide_what="c")
  uncond = tiny_model()
  with pytest.raises(ValueError, match="unconditional"):
    uncond(jnp.zeros((1, 8, 8, 1)), jnp.array([0]))


def test_sequential_sampler_reads_the_weights_in_place():
  """No per-token copy of any layer weight: XLA does not hoist slices of the stacked weights out
  of the token loop, so slicing them inside it once copied every weight on every token."""
  model = tiny_model(in_channels=1, img_size=8, patch_size=2, channels=128, num_blocks=1,
                     layers_per_block=2)
  noise = jnp.zeros((2, model.num_tokens, model.token_dim))
  hlo = sequential._reverse.lower(model, noise, None, None, jnp.float32(1), None,
                                  guide_what="ab").compile().as_text()
  bodies = [c for c in hlo.split("\n\n") if "while" in c.split("\n")[0] or "region" in
            c.split("\n")[0]]
  loop = max(bodies, key=lambda c: c.count("\n"))  # The token loop's body: the largest region.
  weight_shapes = {"f32[128,384]", "f32[128,128]", "f32[128,512]", "f32[512,128]"}
  instructions = re.findall(r"^\s*%\S+ = (f32\[[\d,]+\])\S* ([\w-]+)\(", loop, re.M)
  copies = [(shape, op) for shape, op in instructions
            if shape in weight_shapes and op not in ("get-tuple-element", "parameter")]
  assert not copies, copies[:3]


def test_sequential_sampler_attends_only_to_the_filled_chunks(monkeypatch):
  """The sampler's KV cache grows chunk by chunk, so a step's attention reads the chunks filled so
  far, not the whole sequence (half the memory traffic on long sequences); samples are those of a
  single full-length cache."""
  model = tiny_model(in_channels=3, img_size=8, patch_size=2, num_blocks=1, layers_per_block=2,
                     num_classes=3)
  block = model.blocks[0]
  z = jax.random.normal(jax.random.key(0), (2, model.num_tokens, model.token_dim))
  labels = jnp.array([0, 2])

  def sample():  # Traced afresh at every call: the chunking is read at trace time.
    fn = jax.jit(lambda z: sequential.invert_block(block, z, labels,
                                                   guidance_weights=jnp.full((15,), 1.5)))
    return fn(z), fn.lower(z).compile().as_text()

  monkeypatch.setattr(sequential, "MIN_SAMPLING_CHUNK", 4)
  assert sequential.sampling_chunks(15) == [(0, 5), (5, 10), (10, 15)]
  chunked, hlo = sample()
  # Attention logits (guided batch 4, 1 query; XLA drops the single head) over the keys of each
  # chunk's cache.
  key_counts = set(re.findall(r"= f32\[4,1,(\d+)\]\S* dot\(", hlo))
  assert key_counts == {"5", "10", "15"}, key_counts
  monkeypatch.setattr(sequential, "MIN_SAMPLING_CHUNK", 10**6)
  assert sequential.sampling_chunks(15) == [(0, 15)]
  single, _ = sample()
  assert rel_err(chunked, z) > 1e-2
  np.testing.assert_allclose(chunked, single, atol=1e-6, rtol=0)
