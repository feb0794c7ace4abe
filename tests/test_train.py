"""The trainer: end-to-end tiny run, sharded == unsharded, resume onto fewer devices, configs."""

import glob
import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import REPO, job_env, read_scalars, tiny_config
from tarflow_flax import checkpoint, config_lib, flops, models, sharding, steps, train
from tarflow_flax.models import tarflow_config

CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))


def _config_module(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _load_config(path, preset=None):
  module = _config_module(path)
  return module.get_config(preset) if preset is not None else module.get_config()


def _presets(path):
  """The named presets a config file declares in PRESETS (besides its default)."""
  return [p for p in getattr(_config_module(path), "PRESETS", ()) if p]


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_validates_and_builds_abstractly(path, capsys):
  for preset in [None] + _presets(path):
    config = _load_config(path, preset)
    config_lib.validate(config)
    model = nnx.eval_shape(lambda c=config: models.build_model(c))
    counted = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert counted == flops.num_params(config)
    print(f"{os.path.basename(path)}:{preset or ''} {counted / 1e6:.1f} M parameters")
  if path.endswith("imagenet64.py"):
    assert 440e6 < flops.num_params(_load_config(path)) < 480e6  # Paper: about 460 M.


def _run_main(workdir, *overrides, devices=8):
  cmd = [sys.executable, "-m", "tarflow_flax.main", "--config=configs/tiny.py",
         f"--workdir={workdir}", *overrides]
  return subprocess.Popen(cmd, cwd=REPO, env=job_env(devices),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_bad_config_value_stops_with_one_line(tmp_path):
  proc = _run_main(tmp_path, "--config.model.channels=96")
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode != 0
  assert "config.model.channels=96: must be a positive multiple of the head width 64" in out
  assert "Traceback" not in out


def test_tiny_trains_end_to_end_with_metrics_samples_and_eval(tmp_path):
  config = tiny_config(**{"num_train_steps": 6, "log_every_steps": 2,
                          "checkpoint_every_steps": 3, "sample_every_steps": 6,
                          "eval_every_steps": 6, "num_eval_batches": 2, "sample.num_images": 4,
                          })
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(metrics["train/loss"]) and np.isfinite(metrics["eval/bpd"])
  scalars = read_scalars(tmp_path)
  for tag in ["train/loss", "train/bpd", "train/prior", "train/logdet", "train/logdet_block_0",
              "train/logdet_block_1", "train/grad_norm", "train/learning_rate",
              "perf/steps_per_sec", "perf/images_per_sec", "eval/bpd"]:
    assert tag in scalars, tag
  assert sorted(scalars["train/loss"]) == [2, 3, 4, 6]  # Log steps, and checkpoint steps.
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"images": 0})
  acc.Reload()
  assert "samples" in acc.Tags()["images"] or "samples" in acc.Tags()["tensors"]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6"]


def test_sharded_step_equals_unsharded():
  """Same batches, same losses on 1 device and on a 4 (data) × 2 (fsdp) mesh."""
  config = tiny_config(**{"model.nvp": False, "ema_decay": 0.9, "grad_accum_steps": 2})
  trainer, abstract = steps.make_trainer(config)
  rng = np.random.default_rng(0)
  batches = [{"image": rng.integers(0, 256, (8, 16, 16, 1), dtype=np.uint8),
              "label": np.zeros((8,), np.int32),
              "index": np.arange(8 * i, 8 * i + 8, dtype=np.uint32)} for i in range(3)]
  runs = []
  for data, fsdp in [(1, 1), (4, 2)]:
    config.mesh.data, config.mesh.fsdp = data, fsdp
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:data * fsdp])
    shardings = steps.state_shardings(trainer, abstract, mesh)
    state = steps.init_train_state(trainer, mesh, shardings)
    step = steps.compile_train_step(trainer, shardings, mesh)
    losses = []
    for batch in batches:
      state, metrics = step(state, jax.device_put(batch, sharding.batch_sharding(mesh)))
      losses.append(float(metrics["loss"]))
    runs.append((losses, np.asarray(state.model["var"][...])))
    if fsdp == 2:  # The large matrices really are split over fsdp.
      kernel = state.model["blocks"][0]["layers"]["mlp"]["up"]["kernel"]
      assert kernel.sharding.spec[1] == "fsdp"
  np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5)
  np.testing.assert_allclose(runs[0][1], runs[1][1], rtol=1e-5)  # VP prior, global-batch mean.


# Resumed == uninterrupted after a SIGKILL is tested on gs:// (test_gcs.py), and 2 processes ==
# 1 process (through a SIGTERM and a resume) in test_multiprocess.py.


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  config = tiny_config(**{"num_train_steps": 8, "learning_rate": 1e30, "warmup_steps": 0,
                          "checkpoint_every_steps": 1, "log_every_steps": 1})
  with pytest.raises(train.NonFiniteLossError, match="last good checkpoint"):
    train.train_and_evaluate(config, str(tmp_path))
  saved = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
  assert saved and saved[-1] < 8


def test_non_finite_loss_before_any_checkpoint_says_so(tmp_path):
  config = tiny_config(**{"num_train_steps": 8, "learning_rate": 1e30, "warmup_steps": 0,
                          "grad_clip_norm": 1.0, "log_every_steps": 1})
  with pytest.raises(train.NonFiniteLossError) as error:
    train.train_and_evaluate(config, str(tmp_path))
  assert str(error.value).endswith("No checkpoint was written before it: lower learning_rate "
                                   "and start again.")


def test_resume_onto_a_mesh_with_fewer_devices(tmp_path):
  # Saved on this process's 8 devices, resumed by a job on 2.
  train.train_and_evaluate(tiny_config(num_train_steps=2, checkpoint_every_steps=2),
                           str(tmp_path))
  second = _run_main(tmp_path, "--config.num_train_steps=4", "--config.checkpoint_every_steps=2",
                     "--config.log_every_steps=1", devices=2)
  out, _ = second.communicate(timeout=300)
  assert second.returncode == 0, out[-3000:]
  assert "Resumed from" in out and "step 2" in out
  assert sorted(read_scalars(tmp_path)["train/loss"])[-2:] == [3, 4]


# Every key may change on resume (the weights are the same tree), e.g. the unrolled layers that
# configs/imagenet64.py recommends on v5p; a key that changes the weights may not.
_RUNTIME_CHANGES = {"model.dtype": "bfloat16", "model.remat": True,
                    "model.remat_policy": "save_matmuls", "model.attention": "xla",
                    "model.scan_layers": False}


def test_resume_with_runtime_only_model_keys_changed(tmp_path):
  assert set(_RUNTIME_CHANGES) == {f"model.{k}" for k in tarflow_config.RUNTIME_ONLY_KEYS}
  train.train_and_evaluate(tiny_config(num_train_steps=2, checkpoint_every_steps=2),
                           str(tmp_path))
  directory = tmp_path / "checkpoints"
  for key, value in _RUNTIME_CHANGES.items():
    checkpoint.check_same_model(directory, 2, tiny_config(**{key: value}))
  with pytest.raises(config_lib.ConfigError, match="differs in channels"):
    checkpoint.check_same_model(directory, 2, tiny_config(**{"model.channels": 128}))
  # All of them at once, for real: the unrolled bf16 model resumes from the scanned f32 one.
  metrics = train.train_and_evaluate(
      tiny_config(num_train_steps=3, checkpoint_every_steps=3, **_RUNTIME_CHANGES), str(tmp_path))
  assert np.isfinite(metrics["train/loss"])
  assert sorted(os.listdir(directory)) == ["2", "3"]


def test_a_checkpoint_from_before_a_config_key_existed_still_loads():
  stored = json.loads(json.dumps(tiny_config(**{"model.channels": 128}).to_dict()))
  del stored["model"]["cond_dim"]  # Written by a version without AdaLN.
  del stored["sample"]
  config = checkpoint.config_from_meta({"config": json.dumps(stored)})
  assert config.model.channels == 128 and config.model.cond_dim == 0
  assert config.sample.to_dict() == config_lib.base_config().sample.to_dict()
  config_lib.validate(config)
