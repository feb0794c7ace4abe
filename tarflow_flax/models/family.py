"""The seam between a kind of model and the rest of the project.

A model family is everything the trainer, the checkpoints and config validation need to know
about one kind of model; `models/__init__.py` holds the table `config.model.name` picks from.
A new family (a latent flow, a variant block) is a module with its own config rules, its
nnx.Module and its training contract, and one row in that table. The samplers and the reference
converter are TarFlow's own (`sampling/`, `convert.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable


class ModelConfigError(ValueError):
  """A `config.model` value breaks a rule of its family; the message names the key and the
  rule (config_lib reports it as a ConfigError)."""


@dataclasses.dataclass(frozen=True)
class ModelFamily:
  """One kind of model.

  validate(model_config, image_size): raises ModelConfigError naming the first broken rule.
  build(config, rngs): the nnx.Module of a full config (`config.image_size`, `config.model`).
  runtime_only_keys: `config.model` keys that change how the model runs, not which weights it
    has: a run may resume, fine-tune or load converted weights with any of them changed.
  neutral_when_absent: parameter path parts a checkpoint may lack when fine-tuning (their fresh
    initialisation leaves the model's function unchanged).
  loss(model, images, labels, cond) → (loss, logged, stats): the scalar the optimizer
    minimises, the values to log each step ({name: array}) and the batch statistics `update`
    reads; all averaged over gradient-accumulation micro-batches.
  update(model_config, rest, stats) → rest: the non-parameter state after an optimizer step
    (e.g. a prior's running variance), from the step's statistics.
  """
  validate: Callable[[Any, int], None]
  build: Callable[[Any, Any], Any]
  runtime_only_keys: tuple[str, ...]
  neutral_when_absent: tuple[str, ...]
  loss: Callable[..., tuple[Any, dict, dict]]
  update: Callable[[Any, Any, dict], Any]
