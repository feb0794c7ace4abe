"""The torch-free .pth reader: exact arrays, and refusal of anything but a tensor state_dict."""

import pickle
import zipfile

import numpy as np
import pytest

from tarflow_flax import torch_io


def test_writer_reader_round_trip_keeps_dtypes_and_values(tmp_path):
  rng = np.random.default_rng(0)
  state = {
      "a.weight": rng.normal(size=(3, 5)).astype(np.float32),
      "a.bias": rng.normal(size=(5,)).astype(np.float16),
      "steps": np.array(7, np.int64),
      "table": rng.integers(0, 255, size=(2, 3, 4)).astype(np.uint8),
      "f64": rng.normal(size=(4, 1)),
  }
  path = tmp_path / "sd.pth"
  torch_io.save_torch_state_dict(state, str(path))
  loaded = torch_io.load_torch_state_dict(str(path))
  assert list(loaded) == list(state)
  for key, value in state.items():
    assert loaded[key].dtype == value.dtype, key
    np.testing.assert_array_equal(loaded[key], value, err_msg=key)


def test_foreign_global_is_refused_and_never_called(tmp_path):
  marker = tmp_path / "pwned"
  payload = (torch_io._p_str("evil") + torch_io._p_global("os", "system") +
             torch_io._p_tuple(torch_io._p_str(f"touch {marker}")) + b"R")
  path = tmp_path / "evil.pth"
  torch_io.save_torch_state_dict({"w": np.ones(2, np.float32)}, str(path),
                                 extra_pickle_items=payload)
  with pytest.raises(torch_io.UnsafePickleError, match="os.system"):
    torch_io.load_torch_state_dict(str(path))
  assert not marker.exists()


def test_not_a_zip_file(tmp_path):
  path = tmp_path / "legacy.pth"
  path.write_bytes(pickle.dumps({"w": 1}))
  with pytest.raises(ValueError, match="not a zip-format PyTorch file"):
    torch_io.load_torch_state_dict(str(path))


def test_non_tensor_entries_are_refused(tmp_path):
  path = tmp_path / "nested.pth"
  nested = torch_io._p_str("model") + b"}"  # An empty dict where a tensor should be.
  torch_io.save_torch_state_dict({"w": np.ones(2, np.float32)}, str(path),
                                 extra_pickle_items=nested)
  with pytest.raises(ValueError, match="entry 'model' is dict"):
    torch_io.load_torch_state_dict(str(path))


def test_a_pickled_list_is_not_a_state_dict(tmp_path):
  path = tmp_path / "list.pth"
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", pickle.dumps([1, 2], protocol=2))
  with pytest.raises(ValueError, match="holds a list, not a state_dict"):
    torch_io.load_torch_state_dict(str(path))
