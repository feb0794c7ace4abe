"""Mapping reference state_dicts onto the NNX model, and the convert job → Orbax checkpoint."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import GOLDEN_DIR, rel_err
from tarflow_flax import checkpoint, config_lib, convert, torch_io

GOLDEN = os.path.join(GOLDEN_DIR, "uncond_small.npz")


@pytest.fixture(scope="module")
def golden():
  d = np.load(GOLDEN)
  cfg = json.loads(str(d["config"]))
  state = {k[len("param/"):]: d[k].astype(np.float32) for k in d.files if k.startswith("param/")}
  return d, cfg, state


def test_token_permutation_maps_channel_major_to_channel_minor():
  perm = convert.token_permutation(in_channels=3, patch_size=2)
  # ours[(ph, pw, c)] = ref[c·4 + ph·2 + pw]
  assert perm.tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]


def test_missing_key_is_named(golden):
  _, cfg, state = golden
  state = dict(state)
  del state["blocks.1.attn_blocks.0.mlp.main.2.bias"]
  with pytest.raises(convert.StateDictMismatchError,
                     match=r"missing key 'blocks.1.attn_blocks.0.mlp.main.2.bias'"):
    convert.model_from_torch_state_dict(state, **cfg)


def test_shape_mismatch_names_key_and_shapes(golden):
  _, cfg, state = golden
  with pytest.raises(convert.StateDictMismatchError,
                     match=r"'blocks.0.pos_embed': checkpoint shape \(16, 128\), .* \(16, 192\)"):
    convert.model_from_torch_state_dict(state, **{**cfg, "channels": 192})


def test_unexpected_key_is_named(golden):
  _, cfg, state = golden
  with pytest.raises(convert.StateDictMismatchError, match=r"unexpected key 'blocks.3.pos_embed'"):
    convert.model_from_torch_state_dict(state, **{**cfg, "num_blocks": 3})


def test_wrapper_prefixes_are_stripped(golden):
  d, cfg, state = golden
  wrapped = {"module." + k: v for k, v in state.items()}
  model = convert.model_from_torch_state_dict(wrapped, **cfg)
  z, _, _ = model(jnp.asarray(np.transpose(d["x"], (0, 2, 3, 1))))
  perm = convert.token_permutation(cfg["in_channels"], cfg["patch_size"])
  assert rel_err(z, d["z"][..., perm]) <= 1e-5


def test_the_job_writes_a_checkpoint_the_project_loads(golden, tmp_path):
  d, cfg, state = golden
  pth = tmp_path / "model.pth"
  torch_io.save_torch_state_dict(state, str(pth))
  config = config_lib.base_config()
  config.image_size = cfg["img_size"]
  for key in ("in_channels", "patch_size", "channels", "num_blocks", "layers_per_block"):
    config.model[key] = cfg[key]
  out = tmp_path / "ckpt"
  assert convert.write_checkpoint(str(pth), config, str(out)) == 0
  model, meta = checkpoint.load_model(str(out))
  assert meta["source"] == str(pth) and meta["weights"] == "model"
  z, _, _ = model(jnp.asarray(np.transpose(d["x"], (0, 2, 3, 1))))
  perm = convert.token_permutation(cfg["in_channels"], cfg["patch_size"])
  assert rel_err(z, d["z"][..., perm]) <= 1e-5


def test_corrupt_checkpoint_gives_a_clear_error(golden, tmp_path):
  _, cfg, state = golden
  model = convert.model_from_torch_state_dict(state, **cfg)
  from tarflow_flax import config_lib
  c = config_lib.base_config()
  c.image_size, c.model.in_channels, c.model.patch_size = cfg["img_size"], 3, cfg["patch_size"]
  c.model.channels, c.model.num_blocks, c.model.layers_per_block = 128, 4, 2
  checkpoint.save_model_checkpoint(str(tmp_path), model, c)
  for root, _, files in os.walk(tmp_path / "0" / "model"):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "r+b") as f:
        f.truncate(max(os.path.getsize(path) // 3, 1))
  with pytest.raises(checkpoint.CheckpointError, match="step 0: cannot restore 'model'"):
    checkpoint.load_model(str(tmp_path))
  with pytest.raises(checkpoint.CheckpointError, match="no checkpoint directory"):
    checkpoint.load_model(str(tmp_path / "nowhere"))
