"""Optimizer and learning-rate schedule (paper defaults: AdamW (0.9, 0.95), wd 1e-4, lr 1e-4)."""

import optax


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
