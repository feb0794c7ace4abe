"""Copies a dataset prepared in a local folder into a remote data_dir (gs://) through etils.epath.

TFDS takes a dataset version folder as prepared once its `dataset_info.json` is there, so that
file goes last: an interrupted upload never looks prepared. A file already there at the same size
is skipped, so rerunning completes an interrupted upload without copying everything again (an
object appears in GCS only when its upload finishes, so a partial one is never at full size).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

from etils import epath

from tarflow_flax.input_pipeline.sources import PREPARED_MARKER

_CHUNK_BYTES = 64 * 2**20
_PROGRESS_EVERY_S = 30.0


class _StopRequested(Exception):
  """should_stop() said so in the middle of a file."""


@dataclasses.dataclass
class UploadSummary:
  copied_files: int = 0
  copied_bytes: int = 0
  skipped_files: int = 0
  skipped_bytes: int = 0


def _files_under(folder: epath.Path) -> list[epath.Path]:
  files = []
  for child in sorted(folder.iterdir()):
    files.extend(_files_under(child) if child.is_dir() else [child])
  return files


def upload_order(local_dir: epath.Path) -> list[epath.Path]:
  """The files under `local_dir`, the prepared marker(s) last."""
  # sorted() is stable: the other files keep their order.
  return sorted(_files_under(local_dir), key=lambda p: p.name == PREPARED_MARKER)


def copy_file(source: epath.Path, dest: epath.Path, on_chunk: Callable[[int], None]) -> None:
  """Streams `source` into `dest` (any epath backend), calling on_chunk(bytes) as it goes."""
  with source.open("rb") as reader, dest.open("wb") as writer:
    while chunk := reader.read(_CHUNK_BYTES):
      writer.write(chunk)
      on_chunk(len(chunk))


def human_bytes(n: float) -> str:
  for unit in ("B", "KB", "MB", "GB"):
    if n < 1000:
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1000
  return f"{n:.1f} TB"


def upload(local_dir: epath.Path, remote_dir: epath.Path, *, report: Callable[[str], None],
           should_stop: Callable[[], bool] = lambda: False) -> UploadSummary:
  """Copies every file under `local_dir` to the same relative path under `remote_dir`, the
  prepared marker last, skipping files already there at the same size. `report` gets progress
  lines; `should_stop()` is polled between chunks (True: returns early, the marker not copied; a
  file cut short is shorter than its source, so the next run copies it again)."""
  files = upload_order(local_dir)
  sizes = {f: f.stat().length for f in files}
  total = sum(sizes.values())
  summary = UploadSummary()
  start = last_report = time.monotonic()

  def progress(n: int) -> None:
    nonlocal last_report
    if should_stop():
      raise _StopRequested()
    summary.copied_bytes += n
    now = time.monotonic()
    if now - last_report >= _PROGRESS_EVERY_S:
      last_report = now
      done = summary.copied_bytes + summary.skipped_bytes
      rate = summary.copied_bytes / max(now - start, 1e-9)
      report(f"upload: {human_bytes(done)} of {human_bytes(total)} ({100 * done / total:.0f} %), "
             f"{human_bytes(rate)}/s")

  for index, source in enumerate(files, 1):
    if should_stop():
      return summary
    dest = remote_dir / source.relative_to(local_dir)
    if dest.exists() and dest.stat().length == sizes[source]:
      summary.skipped_files += 1
      summary.skipped_bytes += sizes[source]
      continue
    report(f"upload {index}/{len(files)}: {dest} ({human_bytes(sizes[source])})")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
      copy_file(source, dest, progress)
    except _StopRequested:
      return summary
    summary.copied_files += 1
  return summary
