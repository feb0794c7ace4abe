"""Which files outside the repository the test process opens, so the suite can prove that its
data ships with the repository (a fresh clone with nothing beside it passes).

`install()` adds a Python audit hook that records every file opened for reading whose path lies
outside the allowed roots: this repository, temporary folders, installed code (the Python prefix,
`sys.path` entries), the operating system's own folders and the hidden folders of the home
directory (libraries' settings and caches, e.g. ~/.keras/keras.json). conftest checks the record
around every test. It sees this process only (not the jobs a test starts), and C libraries that open
files without Python (XLA, TensorFlow) are not seen; the data paths the tests use are Python's.
"""

from __future__ import annotations

import os
import sys
import tempfile

# What the OS, the dynamic loader and the libraries' own set-up read (never test data).
_SYSTEM_ROOTS = ("/proc", "/sys", "/dev", "/etc", "/usr", "/lib", "/lib64", "/run", "/opt",
                 "/var/lib", "/var/cache")

_outside: list[str] = []
_allowed: tuple[str, ...] = ()


def _root(path: str) -> str:
  return os.path.join(os.path.realpath(path), "")


def allowed_roots(repo: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
  """Folders whose files the tests may read: `repo`, temp dirs, installed code, OS folders."""
  code = [p for p in sys.path if p and os.path.isdir(p)
          and not os.path.realpath(repo).startswith(os.path.realpath(p) + os.sep)]
  roots = [repo, tempfile.gettempdir(), sys.prefix, sys.base_prefix, sys.exec_prefix,
           *code, *_SYSTEM_ROOTS, *extra]
  return tuple(sorted({_root(r) for r in roots}))


def is_outside(path, roots: tuple[str, ...]) -> bool:
  """True for a file path (str or bytes) under none of `roots`."""
  if isinstance(path, int):  # os.fdopen of a descriptor: its path was checked when opened.
    return False
  path = _root(os.fsdecode(path))
  home = _root(os.path.expanduser("~"))
  if path.startswith(home) and path[len(home):].startswith("."):
    return False
  return not path.startswith(roots)


def _hook(event: str, args) -> None:
  if event != "open":
    return
  path, mode = args[0], args[1]
  if path is None or (isinstance(mode, str) and any(c in mode for c in "wax")):
    return  # Files the tests write are their outputs, not their inputs.
  if isinstance(mode, int) and mode & (os.O_WRONLY | os.O_CREAT):
    return
  if is_outside(path, _allowed):
    _outside.append(os.fsdecode(path))


def install(repo: str, extra: tuple[str, ...] = ()) -> None:
  """Starts recording (once per process); `extra`: more allowed folders (user overrides)."""
  global _allowed
  if not _allowed:
    _allowed = allowed_roots(repo, extra)
    sys.addaudithook(_hook)


def take() -> list[str]:
  """The outside paths opened since the last call (and forgets them)."""
  seen = sorted(set(_outside))
  _outside.clear()
  return seen
