"""Parity with the original PyTorch TarFlow on every golden file in tests/data/golden.

Every shape and option comes from the file's `config` and `sample_args`, so the hidden golden
cases (class-conditional with guidance; volume-preserving with a learned variance) run through the
same code. Tolerance: max|port − ref| / max|ref| ≤ 1e-5 (README of the goldens).
"""

import json
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import golden_files, rel_err
from tarflow_flax import convert, losses, sampling
from tarflow_flax.sampling import sequential

TOL = 1e-5
GUIDED_COND_TOL = 2e-5  # Guided class-conditional chains amplify float32 rounding (README).
ABS_TOL = 1e-5          # loss and bpd: small sums of large terms.

FILES = golden_files()
# Goldens of volume-preserving models also hold the prior update (var_updated).
VP_FILES = [f for f in FILES if "var_updated" in np.load(f).files]


def nhwc(a):
  return np.transpose(a, (0, 2, 3, 1)) if a.ndim == 4 else np.transpose(a, (0, 1, 3, 4, 2))


class Golden:
  """The reference arrays of one file, and our model built from its state_dict."""

  def __init__(self, path):
    self.name = os.path.basename(path)
    self.d = np.load(path)
    self.cfg = json.loads(str(self.d["config"]))
    self.state = {k[len("param/"):]: self.d[k].astype(np.float32)
                  for k in self.d.files if k.startswith("param/")}
    self.model = convert.model_from_torch_state_dict(self.state, **self.cfg)
    self.perm = convert.token_permutation(self.cfg["in_channels"], self.cfg["patch_size"])
    self.y = jnp.asarray(self.d["y"], jnp.int32) if "y" in self.d.files else None
    self.y_sample = (jnp.asarray(self.d["y_sample"], jnp.int32)
                     if "y_sample" in self.d.files else None)

  def tokens(self, key):
    """A reference (N, T, Cp) array in our token layout."""
    return self.d[key][..., self.perm]


_CACHE = {}


@pytest.fixture(scope="module", params=FILES, ids=os.path.basename)
def golden(request):
  if request.param not in _CACHE:
    _CACHE[request.param] = Golden(request.param)
  return _CACHE[request.param]


def test_pth_reader_returns_the_npz_arrays(golden):
  pth = golden.name.replace(".npz", ".pth")
  path = os.path.join(os.path.dirname(FILES[0]), pth)
  if not os.path.exists(path):
    pytest.fail(f"no {pth} beside {golden.name}")  # Every golden ships both files.
  state = convert.load_torch_state_dict(path)
  assert set(state) == set(golden.state)
  for key, value in golden.state.items():
    assert state[key].dtype == np.float32, key
    np.testing.assert_array_equal(state[key], value, err_msg=key)


def test_patchify_matches_unfold(golden):
  x = jnp.asarray(nhwc(golden.d["x"]))
  np.testing.assert_array_equal(golden.model.patchify(x), golden.tokens("x_patch"))
  np.testing.assert_array_equal(golden.model.unpatchify(golden.model.patchify(x)), x)


def test_forward_blocks_logdets_loss(golden):
  z, logdets, aux = golden.model(jnp.asarray(nhwc(golden.d["x"])), golden.y)
  assert rel_err(z, golden.tokens("z")) <= TOL
  assert rel_err(logdets, golden.d["logdets"]) <= TOL
  for i, (out, logdet) in enumerate(zip(aux["block_outputs"], aux["block_logdets"])):
    assert rel_err(out, golden.tokens(f"block_out/{i}")) <= TOL, f"block_out/{i}"
    if golden.cfg["nvp"]:
      assert rel_err(logdet, golden.d[f"block_logdet/{i}"]) <= TOL, f"block_logdet/{i}"
    else:
      np.testing.assert_array_equal(logdet, golden.d[f"block_logdet/{i}"])
  loss = float(losses.nll_loss(z, logdets))
  assert abs(loss - float(golden.d["loss"])) <= ABS_TOL
  assert rel_err(loss, golden.d["loss"]) <= TOL


def _torch_key_to_path(key):
  m = re.fullmatch(r"blocks\.(\d+)\.attn_blocks\.(\d+)\.(.+)", key)
  if m:
    return ("blocks", int(m[1]), "layers") + convert._LAYER_PARAMS[m[3]], int(m[2])
  m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
  names = {"pos_embed": ("pos_embed",), "class_embed": ("class_embed",),
           "proj_in.weight": ("proj_in", "kernel"), "proj_in.bias": ("proj_in", "bias"),
           "proj_out.weight": ("proj_out", "kernel"), "proj_out.bias": ("proj_out", "bias")}
  return ("blocks", int(m[1])) + names[m[2]], None


def test_gradient_norms(golden):
  x = jnp.asarray(nhwc(golden.d["x"]))

  def loss_fn(model):
    z, logdets, _ = model(x, golden.y)
    return losses.nll_loss(z, logdets)

  grads = dict(nnx.to_flat_state(nnx.grad(loss_fn)(golden.model)))
  keys = [k for k in golden.d.files if k.startswith("grad_norm/")]
  assert keys
  for key in keys:
    path, layer = _torch_key_to_path(key[len("grad_norm/"):])
    g = grads[path].get_value()
    g = g if layer is None else g[layer]
    assert rel_err(jnp.linalg.norm(g), golden.d[key]) <= TOL, key


def test_samples(golden):
  noise = jnp.asarray(golden.tokens("noise"))
  args = json.loads(str(golden.d["sample_args"]))
  assert "sample_g0" in args
  for key, kwargs in args.items():
    tol = GUIDED_COND_TOL if golden.y_sample is not None and kwargs["guidance"] > 0 else TOL
    sample = sequential.reverse(golden.model, noise, golden.y_sample, **kwargs)
    assert rel_err(sample, nhwc(golden.d[key])) <= tol, key


def test_reverse_sequence(golden):
  noise = jnp.asarray(golden.tokens("noise"))
  _, sequence = sequential.reverse(golden.model, noise, golden.y_sample, return_sequence=True)
  assert rel_err(sequence, nhwc(golden.d["sample_g0_seq"])) <= TOL


def test_denoising(golden):
  x = jnp.asarray(nhwc(golden.d["sample_g0"]))
  z, logdets, _ = golden.model(x, golden.y_sample)
  assert abs(float(losses.nll_loss(z, logdets)) - float(golden.d["denoise_loss"])) <= ABS_TOL
  out = sampling.denoise(golden.model, x, golden.y_sample, float(golden.d["noise_std"]))
  assert rel_err(out, nhwc(golden.d["denoised"])) <= TOL
  # Sub-batches (as evaluate_fid.py's batch/4) give the same images.
  halves = sampling.denoise(golden.model, x, golden.y_sample, float(golden.d["noise_std"]),
                            batch_size=x.shape[0] // 2)
  assert rel_err(halves, nhwc(golden.d["denoised"])) <= TOL


def test_bits_per_dim(golden):
  x_int = golden.d["x_int"].astype(np.float32)
  x_deq = ((x_int + golden.d["u"]) / 256) * 2 - 1
  np.testing.assert_array_equal(x_deq, golden.d["x_deq"])
  z, logdets, _ = golden.model(jnp.asarray(nhwc(x_deq)))  # y = None, as evaluate_bpd.py.
  bpd = losses.bits_per_dim(z, logdets)
  assert np.max(np.abs(np.asarray(bpd) - golden.d["bpd"])) <= ABS_TOL
  assert rel_err(bpd, golden.d["bpd"]) <= TOL


# Only generated where a VP golden exists (the shipped golden is NVP); the update's formula is also
# tested without goldens in test_model.py.
if VP_FILES:
  @pytest.mark.parametrize("path", VP_FILES, ids=os.path.basename)
  def test_prior_update(path):
    golden = _CACHE.setdefault(path, Golden(path))
    model = convert.model_from_torch_state_dict(golden.state, **golden.cfg)
    z, _, _ = model(jnp.asarray(nhwc(golden.d["x"])), golden.y)
    model.update_prior(z)
    assert rel_err(model.var[...], golden.tokens("var_updated")) <= TOL
