"""The one schema every config in `configs/` fills in, and its validation.

Each `configs/*.py` starts from `base_config()` and overrides what differs, so every key exists in
every config (an override of an unknown key fails loudly in ml_collections) and `validate()` can
check the rules that keep a run from failing hours in.
"""

from __future__ import annotations

import ml_collections

from tarflow_flax import models
from tarflow_flax.input_pipeline import datasets, device_transforms

# The samplers (their table: sampling/api.py) and what classifier-free guidance pushes.
SAMPLE_METHODS = ("sequential", "jacobi", "gs_jacobi", "auto")
GUIDE_WHAT = ("", "a", "b", "ab")


class ConfigError(ValueError):
  """A config value breaks a rule; the message names the key and the rule."""


def base_config() -> ml_collections.ConfigDict:
  """Every key the project reads, with defaults of a tiny CPU model."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.image_size = 16

  c.model = ml_collections.ConfigDict()
  # The model family (models.FAMILIES); the other model keys are that family's (TarFlow's below).
  c.model.name = "tarflow"
  c.model.in_channels = 3
  c.model.patch_size = 4
  c.model.channels = 64          # Transformer width; a multiple of 64 (head width 64).
  c.model.num_blocks = 2
  # An int, or one depth per block (the "deep-shallow" layout of STARFlow), e.g. (8, 2, 2, 2).
  c.model.layers_per_block = ml_collections.FieldReference(2, field_type=object)
  c.model.nvp = True             # False: volume-preserving (shift only, learned prior variance).
  c.model.num_classes = 0        # 0: unconditional.
  c.model.dtype = "float32"      # Compute dtype of matmuls; parameters are always float32.
  c.model.remat = False          # Rematerialise each transformer layer in the backward pass.
  # What remat keeps from the forward pass: 'full' keeps only each layer's input (least memory);
  # 'save_matmuls' keeps the Linear outputs too and recomputes only attention, norms and GELU.
  c.model.remat_policy = "full"
  # Attention kernel: 'xla' (einsum, the reference path), 'cudnn' (jax.nn.dot_product_attention:
  # cuDNN flash attention on GPUs), 'splash' (Pallas TPU splash attention), 'auto' (by platform).
  c.model.attention = "auto"
  # True: one compiled layer body (lax.scan, fast compiles). False: unrolled layers, what the TPU
  # cost model needs for a step-time estimate (compile_check) and ~8% faster on CPU.
  c.model.scan_layers = True
  # AdaLN conditioning on a continuous vector of this size per image (read from data.cond_key);
  # 0: off (no extra parameters, reference-compatible).
  c.model.cond_dim = 0
  # Soft clip of the log-scales, a ← c·tanh(a/c) with c = soft_clip; 0: off (the reference).
  c.model.soft_clip = 0.0

  c.data = ml_collections.ConfigDict()
  c.data.name = "mnist_embedded"
  c.data.data_dir = ml_collections.config_dict.placeholder(str)    # TFDS data_dir.
  c.data.manual_dir = ml_collections.config_dict.placeholder(str)  # User-provided archives.
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.noise_type = "gaussian"  # 'gaussian' (x + noise_std·ε) or 'uniform' (dequantization).
  c.data.noise_std = 0.05
  c.data.random_flip = False
  # Probability of dropping a label (→ -1) and, independently, the continuous condition
  # (→ NaN, the learned null embedding) during training: what classifier-free guidance needs.
  c.data.drop_label = 0.1
  # Dataset feature holding the continuous condition (model.cond_dim > 0), e.g. 'ink' for
  # mnist_embedded; None: no continuous condition.
  c.data.cond_key = ml_collections.config_dict.placeholder(str)
  c.data.num_workers = 0          # grain read threads per host (0: one per core, up to 16).
  c.data.prefetch = 2             # Device batches prepared ahead of the step.

  c.batch_size = 16               # Global batch over all hosts.
  c.grad_accum_steps = 1
  # Training length: num_train_steps > 0 is used as is; 0 derives it from num_epochs passes over
  # the train split, ceil(num_epochs · examples / batch_size) (the reference's --epochs).
  c.num_train_steps = 100
  c.num_epochs = 0.0
  c.learning_rate = 1e-4
  c.min_learning_rate = 1e-6
  # Warm-up likewise: warmup_steps > 0 as is; 0 derives it from warmup_epochs (the reference
  # warms up for one epoch); both 0: no warm-up.
  c.warmup_steps = 10
  c.warmup_epochs = 0.0
  c.weight_decay = 1e-4
  c.adam_b1 = 0.9
  c.adam_b2 = 0.95
  c.grad_clip_norm = 0.0          # 0: off.
  c.ema_decay = 0.0               # 0: no EMA.
  # Fine-tuning: a workdir or a checkpoint root (e.g. convert's output), local or gs://, whose
  # model (+ EMA) weights start a fresh run (new optimizer, data from the start, step 0). An
  # existing checkpoint in this run's workdir takes precedence (resume). None: seed init.
  c.init_from = ml_collections.config_dict.placeholder(str)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                # -1: the devices left after the other axes.
  c.mesh.fsdp = 1

  # TensorBoard events (empty: the workdir). TensorFlow writes them with its own file system
  # layer, so they can live apart from the checkpoints (e.g. local while checkpoints go to gs://).
  c.metrics_dir = ""
  c.log_every_steps = 10
  c.checkpoint_every_steps = 100
  c.keep_checkpoints = 3
  c.sample_every_steps = 0        # 0: off. Each grid also lands in workdir/samples/step_<N>.png.
  # With each sample grid, the sampling trace of its first `sample_trace` images (noise, after
  # each block, sample, denoised) as TensorBoard image 'trace' and workdir/trace/step_<N>.png.
  c.sample_trace = 0              # 0: off.
  c.eval_every_steps = 0          # 0: off.
  # (start, end): a jax.profiler trace of training steps start..end (counted from 1, both
  # included) on process 0, into the TensorBoard events folder (plugins/profile/); (): off.
  c.profile_steps = ()
  # Weights & Biases (the `wandb` extra): the same scalars and images as TensorBoard, from process
  # 0, into this project; empty: off. The run id is kept in the workdir: a resumed run continues
  # the same W&B run. WANDB_MODE=offline and the other WANDB_* variables apply.
  c.wandb_project = ""
  c.wandb_entity = ""             # Empty: the user's default entity.
  c.wandb_run_name = ""           # Empty: W&B's generated name.
  c.num_eval_batches = -1         # -1: the whole eval split.
  c.classify_noise_draws = 1      # Bayes classifier: noise draws per image, losses averaged.
  # In-training FID (off by default): samples from the EMA weights against reference statistics.
  c.fid_every_steps = 0
  c.fid = ml_collections.ConfigDict()
  c.fid.num_samples = 2048
  c.fid.inception_pth = ml_collections.config_dict.placeholder(str)
  c.fid.ref_stats = ml_collections.config_dict.placeholder(str)
  # 'reference' (ml-tarflow's torchmetrics FID, comparable with the paper) or 'pytorch_fid'.
  c.fid.protocol = "reference"

  c.sample = ml_collections.ConfigDict()
  c.sample.num_images = 16
  c.sample.method = "sequential"  # One of SAMPLE_METHODS (sampling/api.py).
  c.sample.guidance = 0.0
  c.sample.guide_what = "ab"
  c.sample.attn_temp = 1.0
  c.sample.annealed_guidance = False
  c.sample.denoise = True         # Score-based denoising step with data.noise_std.
  # Its step as a multiple of σ²·∇log p (1: the theoretical optimum; 0: off), the reference
  # FID script's --self_denoising_lr.
  c.sample.denoise_lr = 1.0
  return c


def override(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """Sets dotted keys in place ({'model.channels': 128, ...}), as `--config.KEY=VALUE` does."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def _fail(key: str, rule: str, value) -> None:
  raise ConfigError(f"config.{key}={value!r}: {rule}")


def validate(c: ml_collections.ConfigDict) -> None:
  """Checks a whole config; raises ConfigError with one line naming key and rule."""
  try:
    models.family(c).validate(c.model, c.image_size)
  except models.ModelConfigError as e:
    raise ConfigError(str(e)) from None
  if c.data.name not in datasets.DATASETS:
    _fail("data.name", f"must be one of {datasets.names()}", c.data.name)
  if c.data.noise_type not in device_transforms.NOISE_TYPES:
    _fail("data.noise_type", f"must be one of {device_transforms.NOISE_TYPES}", c.data.noise_type)
  if c.model.cond_dim and not c.data.cond_key:
    _fail("data.cond_key", f"must name a dataset feature when model.cond_dim={c.model.cond_dim}",
          c.data.cond_key)
  if c.data.cond_key and not c.model.cond_dim:
    _fail("data.cond_key", "needs model.cond_dim > 0 (the size of the feature)", c.data.cond_key)
  if c.init_from is not None and not str(c.init_from).strip():
    _fail("init_from", "must be a workdir or checkpoint path (or None)", c.init_from)
  if not 0.0 <= c.data.drop_label < 1.0:
    _fail("data.drop_label", "must be in [0, 1)", c.data.drop_label)
  if c.batch_size < 1:
    _fail("batch_size", "must be >= 1", c.batch_size)
  if c.grad_accum_steps < 1 or c.batch_size % c.grad_accum_steps:
    _fail("grad_accum_steps", f"must be >= 1 and divide batch_size={c.batch_size}",
          c.grad_accum_steps)
  for key in ("num_epochs", "warmup_epochs"):
    if c[key] < 0:
      _fail(key, "must be >= 0", c[key])
  if c.num_train_steps < 0 or (c.num_train_steps == 0 and not c.num_epochs):
    _fail("num_train_steps", "must be >= 1, or 0 with num_epochs > 0 (derived from the train "
          "split's size)", c.num_train_steps)
  for key in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
              "classify_noise_draws"):
    if c[key] < 1:
      _fail(key, "must be >= 1", c[key])
  if c.fid_every_steps and not (c.fid.inception_pth and c.fid.ref_stats):
    _fail("fid_every_steps", "needs config.fid.inception_pth and config.fid.ref_stats",
          c.fid_every_steps)
  if c.profile_steps and (len(c.profile_steps) != 2 or not 1 <= c.profile_steps[0]
                          <= c.profile_steps[1]):
    _fail("profile_steps", "must be () or (start, end) with 1 <= start <= end", c.profile_steps)
  if c.fid.protocol not in ("reference", "pytorch_fid"):
    _fail("fid.protocol", "must be 'reference' or 'pytorch_fid'", c.fid.protocol)
  for key in ("sample_every_steps", "eval_every_steps", "warmup_steps", "fid_every_steps",
              "sample_trace"):
    if c[key] < 0:
      _fail(key, "must be >= 0 (0 disables)", c[key])
  if not 0.0 <= c.ema_decay < 1.0:
    _fail("ema_decay", "must be in [0, 1)", c.ema_decay)
  if c.learning_rate <= 0:
    _fail("learning_rate", "must be > 0", c.learning_rate)
  if c.sample.method not in SAMPLE_METHODS:
    _fail("sample.method", f"must be one of {', '.join(SAMPLE_METHODS)}", c.sample.method)
  if c.sample.guide_what not in GUIDE_WHAT:
    _fail("sample.guide_what", f"must be one of {', '.join(map(repr, GUIDE_WHAT))}",
          c.sample.guide_what)
  if c.sample.denoise_lr < 0:
    _fail("sample.denoise_lr", "must be >= 0 (0: no denoising)", c.sample.denoise_lr)
  if c.sample.attn_temp <= 0:
    _fail("sample.attn_temp", "must be > 0", c.sample.attn_temp)
