"""The out-of-the-box config: the reference notebook's MNIST demo (class-conditional, patch 4,
width 128, 4 blocks, Gaussian noise 0.1, lr 2e-3 with a cosine schedule) scaled to 14 CPU-minutes
(about 7 min on two idle cores), on the real MNIST digits shipped with the package, at 28x28.

  python -m tarflow_flax.main --config=configs/default.py --workdir=/tmp/tarflow_default

The run ends with validation bits/dim and the Bayes-classifier accuracy on the 500 held-out
digits, and a sample grid in TensorBoard (guided, then denoised).
"""

from tarflow_flax import config_lib


def get_config():
  c = config_lib.base_config()
  c.image_size = 28
  c.model.in_channels = 1
  c.model.patch_size = 4
  c.model.channels = 128
  c.model.num_blocks = 4
  c.model.layers_per_block = 2
  c.model.num_classes = 10
  c.data.name = "mnist_embedded"
  c.data.noise_std = 0.1
  c.data.eval_split = "test"
  c.batch_size = 64
  c.num_train_steps = 400
  c.learning_rate = 2e-3
  c.min_learning_rate = 1e-5
  c.warmup_steps = 40
  c.grad_clip_norm = 1.0
  c.ema_decay = 0.99            # A short run: average over the last ~100 steps only.
  c.log_every_steps = 20
  c.checkpoint_every_steps = 200
  c.sample_every_steps = 400
  c.eval_every_steps = 400
  c.num_eval_batches = -1       # All 500 test digits.
  c.sample.num_images = 20
  c.sample.guidance = 1.0
  c.sample.denoise = True
  return c
