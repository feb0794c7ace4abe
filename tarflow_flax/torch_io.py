"""Read (and, for tests, write) PyTorch `.pth` state_dicts without torch and without running pickles.

A `torch.save` file (zip format, torch >= 1.6) is a zip holding `<name>/data.pkl` (a pickle of the
state_dict whose tensors point at storages by key), `<name>/data/<key>` (raw little-endian storage
bytes) and `<name>/byteorder`. The pickle is read with an unpickler that resolves exactly the globals
a tensor state_dict needs and refuses every other one before anything is called, so a malicious
checkpoint cannot execute code.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
import zlib

import numpy as np
from etils import epath

# torch storage class name -> numpy dtype. BFloat16 is widened through ml_dtypes.
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "BFloat16Storage": "bfloat16",
}


class PthError(ValueError):
  """A `.pth` file that is not a readable tensor state_dict; the message names the file."""


class UnsafePickleError(PthError, pickle.UnpicklingError):
  """The pickle names a global that a tensor state_dict never needs."""


# What a truncated or damaged file raises from zipfile, zlib, pickle and numpy.
_DAMAGE = (zipfile.BadZipFile, zlib.error, EOFError, KeyError, struct.error,
           pickle.UnpicklingError, ValueError, IndexError, TypeError, OverflowError)


class _StorageType:
  """Stands in for `torch.<X>Storage`: only carries the element dtype."""

  def __init__(self, name: str):
    dtype = _STORAGE_DTYPES[name]
    if dtype == "bfloat16":
      import ml_dtypes  # pylint: disable=g-import-not-at-top
      dtype = ml_dtypes.bfloat16
    self.dtype = np.dtype(dtype)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  """Builds the numpy view torch's `_rebuild_tensor_v2` would build (a copy, C-contiguous)."""
  del requires_grad, backward_hooks, metadata
  itemsize = storage.itemsize
  # as_strided does not check bounds: a damaged or crafted file must not read past the storage.
  if storage_offset < 0 or any(d < 0 for d in size) or any(s < 0 for s in stride):
    raise ValueError(f"tensor with negative offset/size/stride {storage_offset}/{size}/{stride}")
  last = storage_offset + sum((d - 1) * s for d, s in zip(size, stride)) if all(size) else -1
  if last >= len(storage) or (not size and storage_offset >= len(storage)):
    raise ValueError(f"tensor of size {tuple(size)} (offset {storage_offset}, strides "
                     f"{tuple(stride)}) reaches past its storage of {len(storage)} elements")
  if not size:
    return np.array(storage[storage_offset])
  view = np.lib.stride_tricks.as_strided(
      storage[storage_offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride),
      writeable=False)
  return np.ascontiguousarray(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _StateDictUnpickler(pickle.Unpickler):
  """Unpickler that knows tensors, storages and ordered dicts, and nothing else."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str):
    super().__init__(file)
    self._archive = archive
    self._prefix = prefix
    self._byteorder = byteorder
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module, name):
    if (module, name) in _ALLOWED_GLOBALS:
      return _ALLOWED_GLOBALS[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise UnsafePickleError(
        f"refusing to load global {module}.{name}: a tensor state_dict never needs it "
        "(the file is not a plain state_dict, or it is malicious)")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
      raise UnsafePickleError(f"unexpected persistent id {pid!r} in a state_dict pickle")
    _, storage_type, key, _location, numel = pid
    if not isinstance(storage_type, _StorageType):
      raise UnsafePickleError(f"persistent id names no known storage type: {storage_type!r}")
    if key not in self._storages:
      raw = self._archive.read(f"{self._prefix}data/{key}")
      dtype = storage_type.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
      array = np.frombuffer(raw, dtype=dtype, count=numel)
      self._storages[key] = array.astype(storage_type.dtype, copy=False)
    return self._storages[key]


def load_torch_state_dict(path) -> dict[str, np.ndarray]:
  """Reads a `torch.save`d state_dict (local or gs:// path) into {key: np.ndarray}, never
  executing pickled code.

  Raises UnsafePickleError for any global other than tensors/storages/OrderedDict, and PthError
  (a ValueError) when the file is not a zip-format torch file, is truncated or damaged, or does
  not hold a flat dict of tensors; FileNotFoundError when it does not exist.
  """
  try:
    with epath.Path(path).open("rb") as f:  # Members are read lazily: the file is not copied.
      obj = _read_archive(f, path)
  except UnsafePickleError as e:
    raise UnsafePickleError(f"{path}: {e}") from e
  except PthError:
    raise
  except _DAMAGE as e:
    raise PthError(f"{path}: truncated or damaged PyTorch file ({type(e).__name__}: "
                   f"{str(e).splitlines()[0] if str(e) else ''})") from e
  if not isinstance(obj, dict):
    raise PthError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
  bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
  if bad:
    raise PthError(f"{path}: not a flat state_dict of tensors (entry {bad[0]!r} is "
                   f"{type(obj[bad[0]]).__name__})")
  return dict(obj)


def _read_archive(file, path):
  """The unpickled object of the torch zip archive in the open binary `file`."""
  try:
    archive = zipfile.ZipFile(file)
  except zipfile.BadZipFile as e:
    raise PthError(f"{path}: not a zip-format PyTorch file (torch.save of torch >= 1.6), or "
                   "truncated") from e
  with archive:
    pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
    if len(pickles) != 1:
      raise PthError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = "little"
    if f"{prefix}byteorder" in archive.namelist():
      byteorder = archive.read(f"{prefix}byteorder").decode().strip()
    unpickler = _StateDictUnpickler(io.BytesIO(archive.read(pickles[0])), archive, prefix,
                                    byteorder)
    return unpickler.load()


# ---------------------------------------------------------------------------------------------
# Writer: torch.save's zip layout and pickle opcodes, so tests can make `.pth` files without torch.
# The opcodes are emitted by hand because the stdlib pickler insists on importing every global.


def _p_global(module: str, name: str) -> bytes:
  return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _p_str(s: str) -> bytes:
  data = s.encode()
  return b"X" + struct.pack("<I", len(data)) + data


def _p_int(i: int) -> bytes:
  return b"J" + struct.pack("<i", i)


def _p_tuple(*items: bytes) -> bytes:
  return b"(" + b"".join(items) + b"t"


def _p_tensor(storage_name: str, key: str, shape, strides) -> bytes:
  numel = int(np.prod(shape, dtype=np.int64))
  storage = _p_tuple(_p_str("storage"), _p_global("torch", storage_name), _p_str(key),
                     _p_str("cpu"), _p_int(numel)) + b"Q"  # BINPERSID
  hooks = _p_global("collections", "OrderedDict") + b")R"
  args = _p_tuple(storage, _p_int(0), _p_tuple(*map(_p_int, shape)),
                  _p_tuple(*map(_p_int, strides)), b"\x89", hooks)
  return _p_global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def save_torch_state_dict(state_dict: dict[str, np.ndarray], path: str,
                          archive_name: str = "archive", extra_pickle_items: bytes = b"") -> None:
  """Writes {key: array} in torch.save's zip layout (readable by torch.load and the loader above).

  `extra_pickle_items` (raw pickle opcodes for key/value pairs) exists so tests can plant
  foreign globals and check that the loader refuses them.
  """
  storage_names = {np.dtype(v): k for k, v in _STORAGE_DTYPES.items() if v != "bfloat16"}
  items, blobs = [], []
  for i, (key, value) in enumerate(state_dict.items()):
    array = np.asarray(value, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
    strides = [int(np.prod(array.shape[d + 1:], dtype=np.int64)) for d in range(array.ndim)]
    items.append(_p_str(key) + _p_tensor(storage_names[array.dtype], str(i), array.shape, strides))
    blobs.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
  pickled = b"\x80\x02}(" + b"".join(items) + extra_pickle_items + b"u."
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
    zf.writestr(f"{archive_name}/data.pkl", pickled)
    zf.writestr(f"{archive_name}/byteorder", "little")
    zf.writestr(f"{archive_name}/.format_version", "1")
    zf.writestr(f"{archive_name}/version", "3\n")  # torch.load requires this record.
    for i, blob in enumerate(blobs):
      zf.writestr(f"{archive_name}/data/{i}", blob)
