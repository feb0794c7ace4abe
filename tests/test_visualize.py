"""Sample images: non-finite samples are reported, and grids keep their padding."""

import numpy as np
from absl import logging

from tarflow_flax import visualize


def test_non_finite_samples_are_logged_and_shown_mid_grey(monkeypatch):
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *args: warnings.append(msg % args))
  images = np.zeros((3, 2, 2, 1), np.float32) + 0.5
  images[1, 0, 0, 0] = np.nan
  images[2, 1, 1, 0] = -np.inf
  clean = visualize.finite_samples(images, "step 7 samples")
  assert warnings == ["step 7 samples: 2 of 3 samples have non-finite values (shown as 0)"]
  assert np.isfinite(clean).all()
  assert clean[1, 0, 0, 0] == 0.0 and clean[2, 1, 1, 0] == 0.0 and clean[1, 1, 1, 0] == 0.5
  assert visualize.to_uint8(clean)[1, 0, 0, 0] == 128


def test_finite_samples_log_nothing(monkeypatch):
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *args: warnings.append(msg % args))
  images = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 2, 2, 1)
  np.testing.assert_array_equal(visualize.finite_samples(images, "x"), images)
  assert not warnings


def test_grid_places_every_image_inside_its_padding():
  images = np.arange(1, 4, dtype=np.uint8)[:, None, None, None] * np.ones((3, 2, 3, 1), np.uint8)
  grid = visualize.make_grid(images, ncol=2, pad=1, pad_value=128)
  assert grid.shape == (2 * 3 + 1, 2 * 4 + 1, 1)
  assert (grid[1:3, 1:4] == 1).all() and (grid[1:3, 5:8] == 2).all() and (grid[4:6, 1:4] == 3).all()
  assert (grid[0] == 128).all() and (grid[:, 4] == 128).all() and (grid[4:6, 5:8] == 128).all()
