"""ImageNet 64x64 TarFlow, 2-768-8-8 (patch-channels-blocks-layers) ≈ 460 M parameters.

Random horizontal flip is on in every preset, as the reference loader always flips (also for
the bits/dim benchmark).

Presets (after a colon); each trains the reference's recipe in epochs (tarflow_flax/paper.py):
  (none)      unconditional generation, Gaussian noise σ = 0.05, bfloat16 compute, 200 epochs;
              samples as the released imagenet64_model_2_768_8_8_0.05.pth was evaluated.
  likelihood  the bits/dim benchmark: van den Oord et al.'s downsampled ImageNet 64x64
              (train_64x64.tar / valid_64x64.tar in data.manual_dir), uniform dequantization,
              float32, 100 epochs. The paper reports 2.99 bits/dim on the validation set.
  cond        class-conditional generation (1000 classes, label dropout 0.1) on ImageNet-2012
              resized to 64x64, 200 epochs; sampled with classifier-free guidance.
  cond_p4     as cond with patch 4 and width 1024 (4-1024-8-8): the released
              imagenet_model_4_1024_8_8_0.05.pth.
Sampling settings (guidance, attention temperature, denoise_lr) are those of the released
models' published FIDs (docs/models.md).

Launch on every host of a TPU slice:
  python -m tarflow_flax.main --config=configs/imagenet64.py:likelihood --workdir=gs://BUCKET/in64
"""

from tarflow_flax import config_lib

PRESETS = ("", "likelihood", "cond", "cond_p4")


def get_config(preset: str = ""):
  c = config_lib.base_config()
  c.image_size = 64
  c.model.in_channels = 3
  c.model.patch_size = 2
  c.model.channels = 768
  c.model.num_blocks = 8
  c.model.layers_per_block = 8
  c.model.dtype = "bfloat16"
  # Remat fits 16 GiB v5e chips (5.6 GiB/chip on v5e-32) and the float32 preset; it costs its
  # recompute: cost-model MFU 43.5 % on v5p vs 56.9 % without. On v5p with bfloat16, pass
  # --config.model.remat=False --config.model.scan_layers=False (67.9 GiB/chip on v5p-16;
  # scanned without remat needs 121 GiB). H100s (compiled, not run; cuDNN attention): the shipped
  # settings take 10.0 GiB/GPU on 8; --config.model.remat=False needs 108.5 GiB/GPU on 8, 55.5 on
  # 16 (too tight), 28.8 on 32: drop remat from 4 hosts of 8. Numbers: benchmarks/README.md.
  c.model.remat = True
  c.data.name = "downsampled_imagenet"
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.noise_std = 0.05
  c.data.random_flip = True  # The reference loader always flips.
  c.batch_size = 256
  c.num_train_steps = 0  # Derived: num_epochs over the train split.
  c.num_epochs = 200
  c.learning_rate = 1e-4
  c.warmup_steps = 0
  c.warmup_epochs = 1
  c.ema_decay = 0.9999
  c.mesh.fsdp = 4
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2_000
  c.sample_every_steps = 10_000
  c.eval_every_steps = 10_000
  c.num_eval_batches = 20
  c.sample.annealed_guidance = True  # As the reference's FID script samples.
  if preset == "":
    c.sample.guidance = 0.2  # Unconditional guidance: the unguided branch attends at attn_temp.
    c.sample.attn_temp = 0.3
    c.sample.denoise_lr = 0.9
  elif preset == "likelihood":
    c.data.noise_type = "uniform"
    c.model.dtype = "float32"
    c.num_epochs = 100
  elif preset in ("cond", "cond_p4"):
    c.data.name = "imagenet2012"
    c.model.num_classes = 1000
    c.data.drop_label = 0.1
    c.sample.guidance = 2.3
    if preset == "cond_p4":
      c.model.patch_size = 4
      c.model.channels = 1024
      c.sample.guidance = 2.0
  else:
    raise ValueError(f"unknown preset {preset!r} (choose one of {PRESETS})")
  return c
