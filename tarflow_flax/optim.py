"""Optimizer and learning-rate schedule (paper defaults: AdamW (0.9, 0.95), wd 1e-4, lr 1e-4)."""

import math

import optax
from absl import logging


def steps_for_epochs(epochs: float, num_examples: int, batch_size: int) -> int:
  """Optimizer steps for `epochs` passes over `num_examples` at `batch_size`, rounded up."""
  return math.ceil(epochs * num_examples / batch_size)


def derive_step_counts(config, num_examples: int) -> None:
  """Fills in `num_train_steps` and `warmup_steps` left at 0 from `num_epochs` and
  `warmup_epochs` over a train split of `num_examples`, in place; counts > 0 are kept."""
  derived = []
  for steps_key, epochs_key in (("num_train_steps", "num_epochs"),
                                ("warmup_steps", "warmup_epochs")):
    if config[steps_key] == 0 and config[epochs_key] > 0:
      config[steps_key] = steps_for_epochs(config[epochs_key], num_examples, config.batch_size)
      derived.append(f"{steps_key}={config[steps_key]} ({config[epochs_key]:g} epochs)")
  logging.info("Schedule: %d steps, warm-up %d, at batch %d over the %d examples of %s:%s "
               "(%.2f epochs)%s", config.num_train_steps, config.warmup_steps, config.batch_size,
               num_examples, config.data.name, config.data.train_split,
               config.num_train_steps * config.batch_size / num_examples,
               f"; derived {', '.join(derived)}" if derived else "")


def learning_rate_schedule(config) -> optax.Schedule:
  """Linear warm-up from `min_learning_rate` to `learning_rate`, then cosine back down.

  As the reference, the first optimizer step runs at the minimum rate.
  """
  return optax.warmup_cosine_decay_schedule(
      init_value=config.min_learning_rate, peak_value=config.learning_rate,
      warmup_steps=config.warmup_steps,
      decay_steps=max(config.num_train_steps, config.warmup_steps + 1),
      end_value=config.min_learning_rate)


def make_optimizer(config) -> optax.GradientTransformation:
  """AdamW on the schedule, with optional global-norm gradient clipping."""
  adamw = optax.adamw(learning_rate_schedule(config), b1=config.adam_b1, b2=config.adam_b2,
                      weight_decay=config.weight_decay)
  if config.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adamw)
  return adamw
