"""Exact bits/dim: golden parity, invariance to sharding and padding, whole-split coverage; job."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import GOLDEN_DIR, tiny_config
from tarflow_flax import checkpoint, convert, eval_lib, evaluate, losses, models, runtime, sharding

GOLDEN = os.path.join(GOLDEN_DIR, "uncond_small.npz")


def test_bpd_matches_golden_sharded_and_padded():
  d = np.load(GOLDEN)
  cfg = json.loads(str(d["config"]))
  state = {k[len("param/"):]: d[k].astype(np.float32) for k in d.files if k.startswith("param/")}
  model = convert.model_from_torch_state_dict(state, **cfg)
  images = np.transpose(d["x_int"], (0, 2, 3, 1))
  u = np.transpose(d["u"], (0, 2, 3, 1))
  mask = np.ones(len(images), bool)
  s, _, n = eval_lib.masked_bpd_sums(model, images, mask, u)
  np.testing.assert_allclose(float(s) / float(n), d["bpd"].mean(), atol=1e-5)
  # Padding rows (masked) change nothing.
  pad_images = np.concatenate([images, np.zeros((4,) + images.shape[1:], np.uint8)])
  pad_u = np.concatenate([u, np.zeros_like(u)])
  s2, _, n2 = eval_lib.masked_bpd_sums(model, pad_images, np.r_[mask, [False] * 4], pad_u)
  assert float(n2) == 4 and abs(float(s2) - float(s)) < 1e-5
  # Sharded over 8 devices: the same sums.
  c = tiny_config(**{"mesh.data": -1})
  mesh = sharding.make_mesh(c.mesh)
  graphdef, mstate = nnx.split(model)
  mstate = jax.device_put(mstate, sharding.state_shardings(mstate, mesh))
  batch = jax.device_put({"x": pad_images, "u": pad_u, "m": np.r_[mask, [False] * 4]},
                         sharding.batch_sharding(mesh))
  fn = jax.jit(lambda st, b: eval_lib.masked_bpd_sums(nnx.merge(graphdef, st), b["x"], b["m"],
                                                      b["u"]))
  s3, _, n3 = fn(mstate, batch)
  assert float(n3) == 4 and abs(float(s3) - float(s)) < 1e-4


def test_whole_split_once_and_device_count_invariant():
  config = tiny_config(**{"batch_size": 24})
  model = models.build_model(config)
  graphdef, state = nnx.split(model)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    config.mesh.data = len(devices)
    mesh = sharding.make_mesh(config.mesh, devices)
    placed = jax.device_put(state, sharding.state_shardings(state, mesh))
    results.append(eval_lib.evaluate_bpd(graphdef, placed, config, mesh, num_dequant=2))
  for r in results:
    assert r["num_images"] == 500 and r["num_dequant"] == 2
  assert abs(results[0]["bpd"] - results[1]["bpd"]) < 1e-5
  assert results[0]["bpd_stderr"] > 0


def test_evaluate_job_bpd_on_a_checkpoint(tmp_path, capsys):
  config = tiny_config()
  checkpoint.save_model_checkpoint(str(tmp_path / "ck"), models.build_model(config), config)
  out = tmp_path / "result.json"
  result = evaluate.bpd(runtime.checkpoint_root(None, str(tmp_path / "ck")), num_batches=3)
  evaluate.report("bpd", result, str(out))
  data = json.loads(out.read_text())
  assert data["num_images"] == 24 and np.isfinite(data["bpd"]) and "log(128)" in data["protocol"]
  assert capsys.readouterr().out.strip().splitlines()[-1] == (
      f'done: bpd {json.dumps({k: data[k] for k in ("bpd", "bpd_stderr", "num_images")})}, '
      f"written to {out}")
  with pytest.raises(runtime.UserError, match="exactly one of --workdir or --checkpoint"):
    runtime.checkpoint_root(None, None)


def test_the_training_bpd_metric_is_the_mean_evaluation_bpd():
  """Train step's `bpd` (from the mean loss) and evaluation's per-image bits/dim: one formula."""
  rng = np.random.default_rng(0)
  z = rng.normal(size=(5, 16, 12)).astype(np.float32) * 1.3
  logdets = rng.normal(size=(5,)).astype(np.float32) * 0.2
  from_loss = losses.nll_to_bits_per_dim(losses.nll_loss(z, logdets))
  assert float(from_loss) == pytest.approx(float(np.mean(losses.bits_per_dim(z, logdets))),
                                           abs=1e-5)
  # Independently: −log p(z)/D − logdet, over ln 2, with 256 bins of width 2/256.
  direct = ((0.5 * np.mean(z.reshape(5, -1)**2, axis=1) + 0.5 * np.log(2 * np.pi)
             + np.log(128.0) - logdets) / np.log(2.0))
  np.testing.assert_allclose(losses.bits_per_dim(z, logdets), direct, rtol=1e-6)
