"""User paths: every file a job reads or writes for the user is an etils.epath Path."""

from __future__ import annotations

import os

from etils import epath


def path(value: str | os.PathLike) -> epath.Path:
  """A user path: gs://… (or another URL) as is, a local path made absolute."""
  value = os.fspath(value)
  return epath.Path(value) if "://" in value else epath.Path(os.path.abspath(value))
