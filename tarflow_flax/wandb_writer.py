"""A CLU MetricWriter that sends scalars, images and hparams to Weights & Biases.

`wandb` is an optional dependency (the `wandb` extra): it is imported only when a run asks for
W&B (config.wandb_project). The W&B run id is kept in `workdir/wandb_run_id`, so rerunning the
same command (a resume) continues the same W&B run.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from clu.metric_writers import interface
from etils import epath

RUN_ID_FILE = "wandb_run_id"


class WandbWriter(interface.MetricWriter):
  """Writes to one W&B run; make it on process 0 only."""

  def __init__(self, workdir: epath.Path, *, project: str, entity: str = "", name: str = ""):
    try:
      import wandb  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(
          "config.wandb_project needs wandb: pip install 'tarflow_flax[wandb]'") from e
    self._wandb = wandb
    id_file = workdir / RUN_ID_FILE
    run_id = id_file.read_text().strip() if id_file.exists() else None  # None: a new run.
    # W&B keeps its local files in a local folder: the workdir when it is local, else W&B's
    # default (WANDB_DIR, or ./wandb).
    local_dir = str(workdir) if not str(workdir).startswith("gs://") else None
    self._run = wandb.init(project=project, entity=entity or None, name=name or None, id=run_id,
                           resume="allow", dir=local_dir,
                           settings=wandb.Settings(quiet=True))
    if run_id is None:
      id_file.write_text(self._run.id)

  @property
  def run_id(self) -> str:
    return self._run.id

  def write_summaries(self, step: int, values: Mapping[str, Any],
                      metadata: Mapping[str, Any] | None = None):
    del metadata
    self._run.log({k: np.asarray(v).item() if np.size(v) == 1 else np.asarray(v)
                   for k, v in values.items()}, step=step)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    self._run.log({k: float(v) for k, v in scalars.items()}, step=step)

  def write_images(self, step: int, images: Mapping[str, Any]):
    """images: {name: (N, H, W, C) uint8 or [0, 1] floats}, as CLU's writers take them."""
    logged = {}
    for key, batch in images.items():
      batch = np.asarray(batch)
      if batch.dtype != np.uint8:
        batch = np.round(np.clip(batch, 0.0, 1.0) * 255).astype(np.uint8)
      pictures = [self._wandb.Image(image[..., 0] if image.shape[-1] == 1 else image)
                  for image in batch]
      logged[key] = pictures[0] if len(pictures) == 1 else pictures
    self._run.log(logged, step=step)

  def write_videos(self, step: int, videos: Mapping[str, Any]):
    self._run.log({k: self._wandb.Video(np.asarray(v)) for k, v in videos.items()}, step=step)

  def write_audios(self, step: int, audios: Mapping[str, Any], *, sample_rate: int):
    self._run.log({k: [self._wandb.Audio(np.asarray(a), sample_rate=sample_rate) for a in v]
                   for k, v in audios.items()}, step=step)

  def write_texts(self, step: int, texts: Mapping[str, str]):
    self._run.log({k: self._wandb.Html(f"<pre>{v}</pre>") for k, v in texts.items()}, step=step)

  def write_histograms(self, step: int, arrays: Mapping[str, Any],
                       num_buckets: Mapping[str, int] | None = None):
    self._run.log({k: self._wandb.Histogram(np.asarray(v),
                                            num_bins=(num_buckets or {}).get(k, 64))
                   for k, v in arrays.items()}, step=step)

  def write_hparams(self, hparams: Mapping[str, Any]):
    self._run.config.update(dict(hparams), allow_val_change=True)

  def flush(self):
    pass  # W&B sends in the background; `close` waits for it.

  def close(self):
    self._run.finish()
