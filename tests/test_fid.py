"""FID: closed forms, and the FID Inception loaded from a torch-format state_dict."""

import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tarflow_flax import fid, torch_io
from tarflow_flax.fid import inception


def test_fid_of_a_set_with_itself_is_zero():
  feats = np.random.default_rng(0).normal(size=(500, 8))
  mu, sigma = fid.compute_statistics(feats)
  assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_fid_of_two_gaussians_matches_the_closed_form():
  rng = np.random.default_rng(1)
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  var1, var2 = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
  expected = np.sum((mu1 - mu2)**2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
  got = fid.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
  np.testing.assert_allclose(got, expected, rtol=1e-9)
  # And from samples: the estimate converges to the closed form.
  a = mu1 + np.sqrt(var1) * rng.normal(size=(200_000, 6))
  b = mu2 + np.sqrt(var2) * rng.normal(size=(200_000, 6))
  np.testing.assert_allclose(fid.frechet_distance(*fid.compute_statistics(a),
                                                  *fid.compute_statistics(b)), expected,
                             rtol=0.02)


def _random_state_dict(seed=0):
  rng = np.random.default_rng(seed)
  state = {"fc.weight": rng.normal(size=(1008, 2048)).astype(np.float32)}
  for prefix, (kh, kw, cin, cout) in inception.torch_layout(inception.InceptionV3()).items():
    std = (2.0 / (kh * kw * cin))**0.5
    state[f"{prefix}.conv.weight"] = (std * rng.normal(size=(cout, cin, kh, kw))).astype(np.float32)
    state[f"{prefix}.bn.weight"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
    state[f"{prefix}.bn.bias"] = rng.normal(scale=0.1, size=cout).astype(np.float32)
    state[f"{prefix}.bn.running_mean"] = rng.normal(scale=0.1, size=cout).astype(np.float32)
    state[f"{prefix}.bn.running_var"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
    state[f"{prefix}.bn.num_batches_tracked"] = np.array(0, np.int64)
  return state


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
  state = _random_state_dict()
  path = tmp_path_factory.mktemp("inc") / "pt_inception.pth"
  torch_io.save_torch_state_dict(state, str(path))
  return state, fid.from_pth(str(path))


def test_inception_maps_torch_weights_conv_and_batchnorm(loaded):
  state, model = loaded
  x = jax.random.uniform(jax.random.key(0), (1, 35, 35, 3), minval=-1, maxval=1)
  # Reference for the first layer straight from the torch tensors: NCHW conv, then BN, ReLU.
  w = state["Conv2d_1a_3x3.conv.weight"]
  conv = jax.lax.conv_general_dilated(jnp.transpose(x, (0, 3, 1, 2)), w, (2, 2), "VALID",
                                      dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                      precision=jax.lax.Precision.HIGHEST)
  g, b, m, v = (state[f"Conv2d_1a_3x3.bn.{k}"] for k in ("weight", "bias", "running_mean",
                                                           "running_var"))
  bn = (conv - m[:, None, None]) / np.sqrt(v[:, None, None] + 1e-3) * g[:, None, None] + \
      b[:, None, None]
  expected = jnp.transpose(jax.nn.relu(bn), (0, 2, 3, 1))
  np.testing.assert_allclose(model.Conv2d_1a_3x3(x), expected, rtol=1e-4, atol=1e-5)


def test_inception_features_and_extractor(loaded):
  _, model = loaded
  images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 1), dtype=np.uint8)
  feats = fid.FeatureExtractor(model, batch_size=2)(images)
  assert feats.shape == (3, 2048) and np.all(np.isfinite(feats)) and np.all(feats >= 0)
  assert np.std(feats[0] - feats[1]) > 0


def test_average_pool_excludes_padding():
  x = jnp.ones((1, 3, 3, 1))
  np.testing.assert_allclose(inception.avg_pool_exclude_pad(x), 1.0)


def test_missing_or_misshaped_key_is_named():
  state = _random_state_dict()
  del state["Mixed_6b.branch7x7_2.bn.running_var"]
  with pytest.raises(ValueError, match=r"missing key 'Mixed_6b.branch7x7_2.bn.running_var'"):
    inception.load_torch_weights(inception.InceptionV3(), state)
  state = _random_state_dict()
  state["Mixed_7c.branch_pool.conv.weight"] = np.zeros((192, 2048, 3, 3), np.float32)
  with pytest.raises(ValueError, match=r"Mixed_7c.branch_pool.conv.weight' has shape "
                                       r"\(192, 2048, 3, 3\), expected \(192, 2048, 1, 1\)"):
    inception.load_torch_weights(inception.InceptionV3(), state)


def test_in_training_fid_is_logged(tmp_path):
  from conftest import read_scalars, tiny_config
  from tarflow_flax import train
  pth = tmp_path / "inception.pth"
  torch_io.save_torch_state_dict(_random_state_dict(), str(pth))
  rng = np.random.default_rng(0)
  fid.save_statistics(str(tmp_path / "ref.npz"),
                      fid.Statistics(rng.normal(size=2048), np.eye(2048), 10, "random",
                                     "reference"))
  config = tiny_config(**{"num_train_steps": 2, "fid_every_steps": 2, "fid.num_samples": 4,
                          "sample.num_images": 4, "fid.inception_pth": str(pth),
                          "fid.ref_stats": str(tmp_path / "ref.npz")})
  train.train_and_evaluate(config, str(tmp_path / "run"))
  values = read_scalars(tmp_path / "run")["eval/fid"]
  assert list(values) == [2] and np.isfinite(values[2]) and values[2] > 0


def _stats(seed=0, dim=6, n=40):
  sums = fid.FeatureSums(dim)
  sums.update(np.random.default_rng(seed).normal(size=(n, dim)))
  return sums.statistics(source="test", protocol="pytorch_fid")


def test_sums_give_the_two_pass_moments():
  # float32, as the network's features (the sums widen them to float64 as torchmetrics does).
  feats = np.random.default_rng(0).normal(loc=3.0, size=(40, 6)).astype(np.float32)
  sums = fid.FeatureSums(6)
  sums.update(feats[:15])
  sums.update(feats[15:])
  mu, sigma = fid.compute_statistics(feats)
  stats = sums.statistics(source="", protocol=None)
  np.testing.assert_allclose(stats.mu, mu, rtol=1e-12)
  np.testing.assert_allclose(stats.sigma, sigma, rtol=1e-10)


def test_statistics_file_formats(tmp_path):
  stats = _stats()
  ours = tmp_path / "ours.npz"
  fid.save_statistics(str(ours), stats)
  back = fid.load_statistics(str(ours))
  assert (back.num_images, back.source, back.protocol) == (40, "test", "pytorch_fid")
  np.testing.assert_array_equal(back.sigma, stats.sigma)
  # pytorch-fid / ADM: mu and sigma only.
  adm = tmp_path / "VIRTUAL_imagenet64.npz"
  np.savez(adm, mu=stats.mu.astype(np.float32), sigma=stats.sigma)
  back = fid.load_statistics(str(adm))
  assert back.num_images is None and back.protocol is None
  np.testing.assert_allclose(back.mu, stats.mu, rtol=1e-6)
  # The reference's .pth: sums, from which mu/sigma follow exactly.
  ref = tmp_path / "mnist_28_fid_stats.pth"
  fid.save_statistics(str(ref), stats)
  back = fid.load_statistics(str(ref))
  assert back.num_images == 40 and back.protocol == "reference"
  # torch.load (checked once with torch 2.13) refuses a zip without the `version` record.
  assert "archive/version" in zipfile.ZipFile(ref).namelist()
  np.testing.assert_allclose(back.sigma, stats.sigma, rtol=1e-12)
  with pytest.raises(ValueError, match="needs 'mu' and 'sigma'"):
    np.savez(tmp_path / "bad.npz", mean=stats.mu)
    fid.load_statistics(str(tmp_path / "bad.npz"))
  with pytest.raises(ValueError, match="needs 'real_features_sum'"):
    torch_io.save_torch_state_dict({"w": np.zeros(3, np.float32)}, str(tmp_path / "bad.pth"))
    fid.load_statistics(str(tmp_path / "bad.pth"))
  with pytest.raises(ValueError, match="stores feature sums"):
    fid.save_statistics(str(tmp_path / "x.pth"), fid.load_statistics(str(adm)))


def test_fid_refuses_statistics_of_another_protocol(loaded):
  _, model = loaded
  extractor = fid.FeatureExtractor(model, batch_size=2, protocol="reference")
  other = fid.Statistics(np.zeros(2048), np.eye(2048), 10, "ref.npz", "pytorch_fid")
  with pytest.raises(ValueError, match="pass --fid_protocol=pytorch_fid"):
    fid.fid_against(extractor, [], other)
  with pytest.raises(ValueError, match="unknown FID protocol"):
    fid.FeatureExtractor(model, protocol="tf")
