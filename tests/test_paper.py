"""The reference's recipes and released checkpoints (tarflow_flax/paper.py) against the configs."""

import glob
import importlib.util
import os

import numpy as np
import pytest
from flax import nnx

from conftest import REPO
from tarflow_flax import config_lib, convert, flops, models, optim, paper, torch_io


def _config(spec: str):
  """configs/<file>[:preset] → its config, as --config=configs/<spec> loads it."""
  file, _, preset = spec.partition(":")
  path = os.path.join(REPO, "configs", file)
  module_spec = importlib.util.spec_from_file_location(file[:-3], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(preset) if preset else module.get_config()


def _shipped_specs():
  specs = []
  for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))):
    file = os.path.basename(path)
    specs.append(file)
    module_spec = importlib.util.spec_from_file_location(file[:-3], path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    specs += [f"{file}:{p}" for p in getattr(module, "PRESETS", ()) if p]
  return specs


def test_every_shipped_config_trains_its_recipe_or_a_fixed_step_count():
  recipes = {r.config: r for r in paper.RECIPES}
  specs = _shipped_specs()
  assert set(recipes) <= set(specs)
  for spec in specs:
    config = _config(spec)
    config_lib.validate(config)
    if spec in recipes:
      recipe = recipes[spec]
      assert (config.num_train_steps, config.warmup_steps) == (0, 0), spec
      assert (config.num_epochs, config.warmup_epochs, config.batch_size) == (
          recipe.epochs, 1, recipe.batch_size), spec
      assert optim.steps_for_epochs(config.num_epochs, paper.TRAIN_EXAMPLES[recipe.dataset],
                                    config.batch_size) == recipe.steps
      # The split the step count assumes is the one the config trains on.
      assert recipe.dataset.split(":")[0] == config.data.name, spec
    else:
      assert spec.split(":")[0] in paper.FIXED_STEP_CONFIGS, f"{spec}: no recipe"
      assert config.num_train_steps > 0, spec


def test_recipe_step_counts():
  steps = {r.config: r.steps for r in paper.RECIPES}
  assert steps == {"imagenet64.py:likelihood": 500_449, "imagenet64.py": 1_000_898,
                   "imagenet64.py:cond": 1_000_912, "imagenet64.py:cond_p4": 1_000_912,
                   "imagenet128.py": 533_820, "afhq256.py": 228_594}


@pytest.mark.parametrize("release", paper.RELEASES, ids=lambda r: r.file)
def test_released_file_name_maps_to_a_config_of_its_architecture(release):
  spec = paper.config_for_release(f"/downloads/{release.file}")
  assert spec == release.config
  named = paper.parse_release_name(release.file)
  config = _config(spec)
  m = config.model
  assert (m.patch_size, m.channels, m.num_blocks, m.layers_per_block, m.num_classes) == (
      named["patch_size"], named["channels"], named["num_blocks"], named["layers_per_block"],
      named["num_classes"])
  assert (config.data.noise_std, config.image_size) == (named["noise_std"], release.image_size)
  assert config.data.noise_type == "gaussian" and m.nvp


def test_unknown_or_malformed_release_names_are_refused():
  with pytest.raises(ValueError, match="not a released checkpoint"):
    paper.config_for_release("afhq_model_8_768_8_8_0.10.pth")
  with pytest.raises(ValueError, match="not a reference checkpoint name"):
    paper.parse_release_name("afhq_8_768.pth")


def reference_state_dict_shapes(*, in_channels, img_size, patch_size, channels, num_blocks,
                                layers_per_block, num_classes, nvp=True):
  """Key → shape of ml-tarflow's `Model(...).state_dict()`, written out from its module tree."""
  tokens, token_dim = (img_size // patch_size) ** 2, in_channels * patch_size ** 2
  shapes = {"var": (tokens, token_dim)}
  for b in range(num_blocks):
    pre = f"blocks.{b}."
    shapes.update({pre + "proj_in.weight": (channels, token_dim), pre + "proj_in.bias": (channels,),
                   pre + "pos_embed": (tokens, channels),
                   pre + "proj_out.weight": (token_dim * (2 if nvp else 1), channels),
                   pre + "proj_out.bias": (token_dim * (2 if nvp else 1),),
                   pre + "attn_mask": (tokens, tokens)})
    if num_classes:
      shapes[pre + "class_embed"] = (num_classes, 1, channels)
    for layer in range(layers_per_block):
      lp = f"{pre}attn_blocks.{layer}."
      shapes.update({
          lp + "attention.norm.weight": (channels,), lp + "attention.norm.bias": (channels,),
          lp + "attention.qkv.weight": (3 * channels, channels),
          lp + "attention.qkv.bias": (3 * channels,),
          lp + "attention.proj.weight": (channels, channels),
          lp + "attention.proj.bias": (channels,),
          lp + "mlp.norm.weight": (channels,), lp + "mlp.norm.bias": (channels,),
          lp + "mlp.main.0.weight": (4 * channels, channels), lp + "mlp.main.0.bias": (4 * channels,),
          lp + "mlp.main.2.weight": (channels, 4 * channels), lp + "mlp.main.2.bias": (channels,)})
  return shapes


def _reference_kwargs(release, channels=None, layers=None):
  named = paper.parse_release_name(release.file)
  return dict(in_channels=3, img_size=release.image_size, patch_size=named["patch_size"],
              channels=channels or named["channels"], num_blocks=named["num_blocks"],
              layers_per_block=layers or named["layers_per_block"],
              num_classes=named["num_classes"])


@pytest.mark.parametrize("release", paper.RELEASES, ids=lambda r: r.file)
def test_released_config_has_the_reference_parameter_shapes_at_full_size(release):
  config = _config(release.config)
  model = nnx.eval_shape(lambda: models.build_model(config))
  ours = {key: shape for key, (_, _, shape) in convert._torch_layout(model).items()}
  reference = {k: v for k, v in reference_state_dict_shapes(**_reference_kwargs(release)).items()
               if not k.endswith("attn_mask")}  # A buffer convert ignores.
  assert ours == reference
  weights = sum(int(np.prod(s)) for k, s in reference.items() if k != "var")
  assert flops.num_params(config) == weights


@pytest.mark.parametrize("release", paper.RELEASES, ids=lambda r: r.file)
def test_a_reference_state_dict_of_each_release_converts(release, tmp_path):
  """Narrow and shallow (width 64, one layer per block) to fit CI; patch, blocks, image size,
  classes and noise as released."""
  config = config_lib.override(_config(release.config),
                               {"model.channels": 64, "model.layers_per_block": 1})
  rng = np.random.default_rng(0)
  state_dict = {k: rng.standard_normal(s).astype(np.float32) for k, s in
                reference_state_dict_shapes(**_reference_kwargs(release, 64, 1)).items()}
  path = tmp_path / release.file
  torch_io.save_torch_state_dict(state_dict, str(path))
  model = convert.model_from_pth(str(path), config)
  np.testing.assert_array_equal(np.asarray(model.blocks[0].pos_embed[...]),
                                state_dict["blocks.0.pos_embed"])


def test_docs_list_every_release_with_its_config_and_fid():
  with open(os.path.join(REPO, "docs", "models.md"), encoding="utf-8") as f:
    text = f.read()
  for release in paper.RELEASES:
    assert release.file in text and f"configs/{release.config}" in text, release.file
    assert release.fid is None or f"{release.fid:.2f}" in text, release.file
