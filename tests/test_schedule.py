"""Training length in epochs: step counts derived from the train split's size, kept on resume."""

import json
import math

import numpy as np
import pytest

from conftest import read_scalars, tiny_config
from tarflow_flax import config_lib, optim, runtime, train

DIGITS_TRAIN = 4500  # The embedded MNIST's train split.


def test_positive_step_counts_win_over_epochs():
  config = tiny_config(**{"num_train_steps": 7, "num_epochs": 3.0, "warmup_steps": 2,
                          "warmup_epochs": 1.0})
  optim.derive_step_counts(config, DIGITS_TRAIN)
  assert (config.num_train_steps, config.warmup_steps) == (7, 2)


def test_zero_steps_need_epochs():
  with pytest.raises(config_lib.ConfigError, match="num_train_steps=0: must be >= 1, or 0 with "
                                                   "num_epochs > 0"):
    config_lib.validate(tiny_config(num_train_steps=0))
  with pytest.raises(config_lib.ConfigError, match="num_epochs=-1.0: must be >= 0"):
    config_lib.validate(tiny_config(num_epochs=-1.0))


def test_two_epochs_of_digits_train_exactly_the_derived_steps_through_a_resume(tmp_path,
                                                                               monkeypatch):
  batch = 128
  overrides = {"num_epochs": 2.0, "num_train_steps": 0, "warmup_epochs": 0.5, "warmup_steps": 0,
               "batch_size": batch, "log_every_steps": 1, "checkpoint_every_steps": 1000}
  total = math.ceil(2 * DIGITS_TRAIN / batch)  # 70.3 → 71: the last partial batch counts.
  warmup = math.ceil(0.5 * DIGITS_TRAIN / batch)
  assert (total, warmup) == (71, 18)

  # A stop request at step 30 (as a SIGTERM would make), then the same command again.
  monkeypatch.setattr(runtime.StopSignal, "should_stop", lambda self, step: step == 30)
  with pytest.raises(runtime.Interrupted, match="stopped at step 30"):
    train.train_and_evaluate(tiny_config(**overrides), str(tmp_path))
  monkeypatch.undo()
  train.train_and_evaluate(tiny_config(**overrides), str(tmp_path))

  checkpoints = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()
                       if p.name.isdigit())
  assert checkpoints == [30, total]
  saved = json.loads((tmp_path / "config.json").read_text())
  assert (saved["num_train_steps"], saved["warmup_steps"]) == (total, warmup)
  # Both halves follow the one derived schedule: warm-up over 18 steps, cosine ending at 71.
  logged = read_scalars(tmp_path)["train/learning_rate"]
  assert sorted(logged) == list(range(1, total + 1))
  schedule = optim.learning_rate_schedule(tiny_config(**{**overrides, "num_train_steps": total,
                                                         "warmup_steps": warmup}))
  np.testing.assert_allclose([logged[s] for s in sorted(logged)],
                             [float(schedule(s - 1)) for s in sorted(logged)], rtol=1e-5)
