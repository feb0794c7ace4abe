"""Where the training job's metrics go: TensorBoard, PNG files of its images, W&B (if asked).

Every process gets the same interface; only process 0 writes (the others log to the console).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from clu import metric_writers
from clu.metric_writers import interface
from etils import epath

from tarflow_flax import visualize


class ImageFileWriter(interface.MetricWriter):
  """Writes every logged image as `folder/<name>/step_<N>.png` (through epath: gs:// works);
  everything else it is given is left to the other writers."""

  def __init__(self, folder: epath.Path):
    self._folder = folder

  def path(self, name: str, step: int) -> epath.Path:
    return self._folder / name / f"step_{step}.png"

  def write_images(self, step: int, images: Mapping[str, Any]):
    for name, batch in images.items():
      batch = np.asarray(batch)
      image = batch[0] if len(batch) == 1 else visualize.make_grid(batch)
      path = self.path(name, step)
      path.parent.mkdir(parents=True, exist_ok=True)
      visualize.save_png(path, image)

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_scalars(self, step, scalars):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    pass

  def close(self):
    pass


def create(config, workdir: epath.Path, metrics_dir: epath.Path) -> interface.MetricWriter:
  """TensorBoard events in `metrics_dir` + image files in `workdir` + W&B when
  config.wandb_project is set."""
  if jax.process_index() > 0:
    return metric_writers.create_default_writer(str(metrics_dir), just_logging=True)
  writers = [metric_writers.create_default_writer(str(metrics_dir)), ImageFileWriter(workdir)]
  if config.wandb_project:
    from tarflow_flax import wandb_writer  # pylint: disable=g-import-not-at-top
    writers.append(wandb_writer.WandbWriter(workdir, project=config.wandb_project,
                                            entity=config.wandb_entity,
                                            name=config.wandb_run_name))
  return metric_writers.MultiWriter(writers)
