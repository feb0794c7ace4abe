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


def _good_file(path):
  rng = np.random.default_rng(0)
  torch_io.save_torch_state_dict({"w": rng.normal(size=(64, 32)).astype(np.float32),
                                  "b": np.ones(32, np.float32)}, str(path))
  return path.read_bytes()


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9, 0.99])
def test_truncated_file_is_one_pth_error_naming_it(tmp_path, cut):
  data = _good_file(tmp_path / "good.pth")
  path = tmp_path / "cut.pth"
  path.write_bytes(data[:int(len(data) * cut)])
  with pytest.raises(torch_io.PthError, match=r"^.*cut\.pth: .*(truncated|not a zip)") as e:
    torch_io.load_torch_state_dict(str(path))
  assert "\n" not in str(e.value) and isinstance(e.value, ValueError)


def _rewrite(src, dst, change):
  """Copies the zip at src to dst with change(name, bytes) -> bytes | None (None: drop)."""
  with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
    for name in zin.namelist():
      data = change(name, zin.read(name))
      if data is not None:
        zout.writestr(name, data)


@pytest.mark.parametrize("damage,message", [
    (lambda n, d: d[:len(d) // 2] if n.endswith("data.pkl") else d, "UnpicklingError|EOFError"),
    (lambda n, d: None if n.endswith("data/0") else d, "KeyError"),
    (lambda n, d: d[:-4] if n.endswith("data/0") else d, "buffer is smaller"),
])
def test_damaged_members_are_one_pth_error(tmp_path, damage, message):
  _good_file(tmp_path / "good.pth")
  _rewrite(tmp_path / "good.pth", tmp_path / "bad.pth", damage)
  with pytest.raises(torch_io.PthError, match=f"bad.pth: truncated or damaged .*({message})"):
    torch_io.load_torch_state_dict(str(tmp_path / "bad.pth"))


def test_corrupted_zip_member_crc_is_one_pth_error(tmp_path):
  data = bytearray(_good_file(tmp_path / "good.pth"))
  with zipfile.ZipFile(tmp_path / "good.pth") as zf:
    info = zf.getinfo("archive/data/0")
  start = info.header_offset + 30 + len(info.filename) + len(info.extra)
  data[start + 10] ^= 0xFF  # A flipped byte inside the stored tensor data.
  (tmp_path / "flip.pth").write_bytes(bytes(data))
  with pytest.raises(torch_io.PthError, match="flip.pth: truncated or damaged .*CRC"):
    torch_io.load_torch_state_dict(str(tmp_path / "flip.pth"))


def test_tensor_view_past_its_storage_is_refused(tmp_path):
  path = tmp_path / "oob.pth"
  # A tensor claiming 1000 elements over a 2-element storage: never read past the buffer.
  oob = torch_io._p_str("big") + torch_io._p_tensor("FloatStorage", "0", (1000,), (1,))
  torch_io.save_torch_state_dict({"w": np.ones(2, np.float32)}, str(path),
                                 extra_pickle_items=oob)
  with pytest.raises(torch_io.PthError, match="reaches past its storage of 2 elements"):
    torch_io.load_torch_state_dict(str(path))


def test_unsafe_pickle_and_missing_file_are_user_errors(tmp_path):
  assert issubclass(torch_io.UnsafePickleError, ValueError)
  with pytest.raises(FileNotFoundError):
    torch_io.load_torch_state_dict(str(tmp_path / "nowhere.pth"))
