"""The guidance sweep: every point sampled and scored, sweep.json + sweep.png, reuse, resume."""

import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import GOLDEN_DIR, tiny_config, tiny_model
from tarflow_flax import checkpoint, evaluate, fid, sample, sweep


class Killed(Exception):
  """Stands for the job being killed in the middle of a point."""


def _random_inception(folder) -> str:
  """The goldens' random FID Inception weights (make_weights.py), as an .npz in `folder`."""
  script = os.path.join(GOLDEN_DIR, "fid", "make_weights.py")
  if not os.path.exists(script):
    pytest.fail(f"missing {script} (set TARFLOW_GOLDEN_DIR); this test never skips")
  spec = importlib.util.spec_from_file_location("make_weights", script)
  make_weights = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(make_weights)
  path = folder / "inception.npz"
  np.savez(path, **make_weights.make_state_dict())
  return str(path)


def test_sweep_scores_every_point_resumes_after_a_kill_and_reuses_points(tmp_path, monkeypatch):
  config = tiny_config(**{"model.num_classes": 3})
  model = tiny_model(in_channels=1, img_size=16, patch_size=4, num_blocks=2, layers_per_block=1,
                     num_classes=3)
  checkpoint.save_model_checkpoint(str(tmp_path / "ckpt"), model, config)
  rng = np.random.default_rng(0)
  fid.save_statistics(str(tmp_path / "ref.npz"), fid.Statistics(
      rng.normal(size=2048), np.eye(2048), 10, "random", "reference"))
  options = sweep.Options(outdir=str(tmp_path / "sweep"), guidance=(0.0, 2.0),
                          num_samples=4, shard_size=4, ref_stats=str(tmp_path / "ref.npz"),
                          inception_pth=_random_inception(tmp_path))
  real_fid, scored = evaluate.fid, []

  def fid_killed_at_the_second_point(samples, *args, **kwargs):
    scored.append(os.path.basename(samples))
    if len(scored) == 2:
      raise Killed
    return real_fid(samples, *args, **kwargs)

  monkeypatch.setattr(evaluate, "fid", fid_killed_at_the_second_point)
  with pytest.raises(Killed):
    sweep.run_sweep(tmp_path / "ckpt", options)
  assert not (tmp_path / "sweep" / "sweep.json").exists()

  # Run again: the first point is reused, the second resumes from its shards and is scored.
  scored.clear()
  monkeypatch.setattr(evaluate, "fid", lambda samples, *a, **k: scored.append(samples) or
                      real_fid(samples, *a, **k))
  rows = sweep.run_sweep(tmp_path / "ckpt", options)
  assert [os.path.basename(s) for s in scored] == [
      sweep.point_name(2.0, None, None)]
  assert json.loads((tmp_path / "sweep" / "sweep.json").read_text()) == rows
  assert [r["guidance"] for r in rows] == [0.0, 2.0]
  for row in rows:
    assert np.isfinite(row["fid"]) and row["fid"] > 0
    assert (row["num_samples"], row["method"], row["attn_temp"]) == (4, "sequential", 1.0)
  assert Image.open(tmp_path / "sweep" / "sweep.png").size[0] > 300

  # Once more: every point is reused, nothing is sampled or scored.
  def must_not_run(*args, **kwargs):
    raise AssertionError("a finished point was computed again")

  monkeypatch.setattr(evaluate, "fid", must_not_run)
  monkeypatch.setattr(sample, "run_job", must_not_run)
  assert sweep.run_sweep(tmp_path / "ckpt", options) == rows
