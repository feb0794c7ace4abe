"""The tests' data ships with the repository: a fresh clone with nothing beside it passes."""

import os
import tempfile

import repo_reads
from conftest import GOLDEN_DIR, REPO

# What the golden tests read (test_golden_parity, test_convert, test_fid_golden, ...).
GOLDEN_FILES = ("uncond_small.npz", "uncond_small.pth", "fid/fid_features.npz",
                "fid/fid_stats_expected.npz", "fid/fid_stats_format.json", "fid/make_weights.py",
                "fid/weights_manifest.json")


def test_golden_files_are_in_the_repository():
  golden = os.path.join(REPO, "tests", "data", "golden")
  if "TARFLOW_GOLDEN_DIR" not in os.environ:
    assert GOLDEN_DIR == golden
  missing = [f for f in GOLDEN_FILES if not os.path.isfile(os.path.join(golden, f))]
  assert not missing, f"missing from tests/data/golden: {missing}"


def test_reads_outside_the_repository_are_recorded():
  roots = repo_reads.allowed_roots(REPO)
  beside = os.path.join(os.path.dirname(REPO), "shared", "golden", "uncond_small.npz")
  if not beside.startswith(os.path.join(tempfile.gettempdir(), "")):  # A clone under /tmp.
    assert repo_reads.is_outside(beside, roots)
  assert repo_reads.is_outside("/nonexistent-root/golden/uncond_small.npz", roots)
  assert repo_reads.is_outside(b"/nonexistent-root/x.json", roots)
  assert not repo_reads.is_outside(os.path.join(GOLDEN_DIR, "uncond_small.npz"), roots)
  assert not repo_reads.is_outside(os.path.join(tempfile.gettempdir(), "x.npz"), roots)
  assert not repo_reads.is_outside(os.__file__, roots)  # Installed code.
  assert not repo_reads.is_outside(os.path.expanduser("~/.keras/keras.json"), roots)
  assert repo_reads.is_outside(os.path.expanduser("~/golden/x.npz"), roots)
  # The hook itself: a read outside is recorded once, a write is not; take() empties the record.
  repo_reads._hook("open", ("/nonexistent-root/a.npz", "rb", 0))  # pylint: disable=protected-access
  repo_reads._hook("open", ("/nonexistent-root/b.npz", "wb", 0))  # pylint: disable=protected-access
  assert repo_reads.take() == ["/nonexistent-root/a.npz"]
  assert not repo_reads.take()
