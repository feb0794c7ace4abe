"""The out-of-the-box config: the reference notebook's MNIST demo (class-conditional, patch 4,
4 blocks of 4 layers, Gaussian noise 0.1, lr 2e-3 with a cosine schedule) scaled to 8 minutes on
two idle CPU cores (width 64, batch 16, 2,200 steps), on the real MNIST digits shipped with the
package, at 28x28.

  python -m tarflow_flax.main --config=configs/default.py --workdir=/tmp/tarflow_default

The run ends with validation bits/dim and the Bayes-classifier accuracy on the 500 held-out
digits (5.505 and 68.6 % when measured: README), and a sample grid in TensorBoard (guided, then
denoised).
"""

from tarflow_flax import config_lib


def get_config():
  c = config_lib.base_config()
  c.image_size = 28
  c.model.in_channels = 1
  c.model.patch_size = 4
  c.model.channels = 64          # Half the notebook's width, its 4 layers per block: 2.3x the
  c.model.layers_per_block = 4   # images/s of width 128 x 2 layers on a CPU, better per minute.
  c.model.num_blocks = 4
  c.model.num_classes = 10
  c.data.name = "mnist_embedded"
  c.data.noise_std = 0.1
  c.data.eval_split = "test"
  c.batch_size = 16              # Small batches learn more per image here (32 beat 64 by far).
  c.num_train_steps = 2200
  c.learning_rate = 2e-3
  c.min_learning_rate = 1e-5
  c.warmup_steps = 110
  c.grad_clip_norm = 1.0
  c.ema_decay = 0.9975          # A short run: average over the last ~400 steps only.
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1100
  c.sample_every_steps = 2200
  c.eval_every_steps = 2200
  c.num_eval_batches = -1       # All 500 test digits.
  c.sample.num_images = 20
  c.sample.guidance = 1.0
  c.sample.denoise = True
  return c
