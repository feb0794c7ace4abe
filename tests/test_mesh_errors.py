"""A mesh that does not fit the devices is one clear line (the jobs print it and exit)."""

import importlib.util
import os

import jax
import pytest

from conftest import REPO
from tarflow_flax import sharding


def test_imagenet64_mesh_on_one_device_names_the_axis_and_the_device_count():
  spec = importlib.util.spec_from_file_location(
      "imagenet64", os.path.join(REPO, "configs", "imagenet64.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  with pytest.raises(ValueError) as e:
    sharding.make_mesh(config.mesh, jax.devices()[:1])
  assert str(e.value) == "config.mesh: fsdp=4 needs a multiple of 4 devices, not 1"
  config.mesh.data, config.mesh.fsdp = 3, 2
  with pytest.raises(ValueError, match=r"^config.mesh: data=3 × fsdp=2 must equal the 8 devices$"):
    sharding.make_mesh(config.mesh, jax.devices()[:8])
