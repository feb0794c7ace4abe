"""sweep.png: FID against guidance, one line per other setting, the best point marked."""

from __future__ import annotations

import io
import itertools

from etils import epath


def _label(row) -> str:
  denoise = "off" if row["denoise_lr"] is None else f"{row['denoise_lr']:g}"
  return f"attn_temp {row['attn_temp']:g}, denoise_lr {denoise}"


def save(rows: list[dict], path) -> None:
  """Draws the sweep's rows (sweep.json) as a PNG at `path` (local or gs://)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")  # No display on a TPU VM.
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  figure, axes = plt.subplots(figsize=(6, 4), dpi=120)
  ordered = sorted(rows, key=lambda r: (_label(r), r["guidance"]))
  for label, line in itertools.groupby(ordered, key=_label):
    line = list(line)
    axes.plot([r["guidance"] for r in line], [r["fid"] for r in line], marker="o", label=label)
  best = min(rows, key=lambda r: r["fid"])
  axes.plot(best["guidance"], best["fid"], marker="*", markersize=16, color="black",
            linestyle="none", label=f"best: FID {best['fid']:.4g} ({_label(best)})")
  axes.set_xlabel("guidance")
  axes.set_ylabel(f"FID ({best['num_samples']} samples, {best['method']})")
  axes.grid(alpha=0.3)
  axes.legend(fontsize=7)
  figure.tight_layout()
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png")
  plt.close(figure)
  epath.Path(path).write_bytes(buffer.getvalue())
