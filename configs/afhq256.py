"""AFHQ 256x256 TarFlow, 8-768-8-8, Gaussian noise σ = 0.07, from an image folder.

AFHQ (cat/dog/wild, one subfolder per class) in data.manual_dir; 3 classes. Random horizontal
flip on, as the reference loader. Trains the reference's recipe, 4,000 epochs at batch 256
(tarflow_flax/paper.py). The released PyTorch checkpoint of ml-tarflow converts with
  python -m tarflow_flax.convert --pth afhq_model_8_768_8_8_0.07.pth --config configs/afhq256.py \
      --out /ckpt/afhq
and samples as its published FID was measured (docs/models.md).
Train:
  python -m tarflow_flax.main --config=configs/afhq256.py --workdir=gs://BUCKET/afhq \
      --config.data.manual_dir=/data/afhq/train
"""

from tarflow_flax import config_lib


def get_config():
  c = config_lib.base_config()
  c.image_size = 256
  c.model.in_channels = 3
  c.model.patch_size = 8
  c.model.channels = 768
  c.model.num_blocks = 8
  c.model.layers_per_block = 8
  c.model.num_classes = 3
  c.model.dtype = "bfloat16"
  # Remat fits v5e (5.7 GiB/chip on v5e-32). On v5p, --config.model.remat=False
  # --config.model.scan_layers=False: cost-model MFU 43.4 % → 56.8 % in 68.7 GiB/chip on v5p-16.
  # H100s (compiled, not run): 10.5 GiB/GPU on 8, 6.2 on 16, 4.2 on 32, cuDNN attention.
  # Numbers: benchmarks/README.md.
  c.model.remat = True
  c.data.name = "image_folder"
  c.data.noise_std = 0.07
  c.data.drop_label = 0.1
  c.data.random_flip = True  # The reference loader always flips.
  c.batch_size = 256
  c.num_train_steps = 0  # Derived: num_epochs over the train split.
  c.num_epochs = 4000
  c.warmup_steps = 0
  c.warmup_epochs = 1
  c.ema_decay = 0.9999
  c.mesh.fsdp = 4
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2_000
  c.sample_every_steps = 5_000
  c.sample.guidance = 3.4
  c.sample.annealed_guidance = True  # As the reference's FID script samples.
  c.sample.denoise_lr = 1.4
  return c
