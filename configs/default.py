"""The out-of-the-box config: real MNIST digits shipped with the package, 32x32, trains on a laptop
CPU in about 10 minutes and gives recognisable digits.

  python -m tarflow_flax.main --config=configs/default.py --workdir=/tmp/tarflow_default
"""

from tarflow_flax import config_lib


def get_config():
  c = config_lib.base_config()
  c.image_size = 32
  c.model.in_channels = 1
  c.model.patch_size = 4
  c.model.channels = 128
  c.model.num_blocks = 4
  c.model.layers_per_block = 2
  c.data.name = "mnist_embedded"
  c.data.noise_std = 0.05
  c.data.eval_split = "test"
  c.batch_size = 64
  c.num_train_steps = 1_500
  c.learning_rate = 1e-3
  c.min_learning_rate = 1e-5
  c.warmup_steps = 100
  c.grad_clip_norm = 1.0
  c.ema_decay = 0.999
  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.sample_every_steps = 500
  c.eval_every_steps = 500
  c.num_eval_batches = 10
  return c
