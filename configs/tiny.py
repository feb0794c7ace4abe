"""Tiny TarFlow that trains in seconds on a CPU: tests and smoke runs.

  python -m tarflow_flax.main --config=configs/tiny.py --workdir=/tmp/tarflow_tiny
"""

from tarflow_flax import config_lib


def get_config():
  c = config_lib.base_config()
  c.image_size = 16
  c.model.in_channels = 1
  c.model.patch_size = 4
  c.model.channels = 64
  c.model.num_blocks = 2
  c.model.layers_per_block = 1
  c.data.name = "mnist_embedded"
  c.batch_size = 8
  c.num_train_steps = 20
  c.warmup_steps = 2
  c.log_every_steps = 5
  c.checkpoint_every_steps = 10
  return c
