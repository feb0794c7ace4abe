"""What it takes to reproduce the paper: the reference's training recipes and the released models.

One home for these facts: the configs set their epochs to `RECIPES` (tests check it), docs/models.md
explains `RELEASES`, and `config_for_release()` maps a released file name to its config preset.

Sources: the apple/ml-tarflow README ("Reproducing results from the paper", commit 313120e) for
the recipes and for Apple's AFHQ checkpoint; the README of the GS-Jacobi authors (Liu & Qin,
"Accelerate TarFlow Sampling with GS-Jacobi Iteration", arXiv 2505.12849) for the retrained
ImageNet checkpoints, their sampling settings and FIDs (its '"For" FID' row: the sequential
sampler, 50 k samples).
"""

from __future__ import annotations

import dataclasses
import math
import re

# Train split sizes the step counts below assume (TFDS split info; AFHQ: its v1 train folders).
TRAIN_EXAMPLES = {
    "downsampled_imagenet": 1_281_149,
    "imagenet2012": 1_281_167,
    "image_folder:afhq": 14_630,  # cat 5,153 + dog 4,739 + wild 4,738.
}


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A reference training run: `epochs` over the train split at `batch_size`, one warm-up epoch."""
  config: str          # configs/<file>[:preset]
  epochs: int
  batch_size: int
  dataset: str         # Key of TRAIN_EXAMPLES.
  note: str = ""

  @property
  def steps(self) -> int:
    """The step count the config derives on the full train split."""
    return math.ceil(self.epochs * TRAIN_EXAMPLES[self.dataset] / self.batch_size)


RECIPES = (
    Recipe("imagenet64.py:likelihood", 100, 256, "downsampled_imagenet"),
    Recipe("imagenet64.py", 200, 256, "downsampled_imagenet"),
    Recipe("imagenet64.py:cond", 200, 256, "imagenet2012"),
    Recipe("imagenet64.py:cond_p4", 200, 256, "imagenet2012",
           note="no published recipe for this retrained model: the 64 px conditional one"),
    Recipe("imagenet128.py", 320, 768, "imagenet2012"),
    Recipe("afhq256.py", 4000, 256, "image_folder:afhq"),
)
# Configs that keep a fixed step count: no reference recipe (CIFAR-10) or CPU demos.
FIXED_STEP_CONFIGS = ("cifar10.py", "default.py", "tiny.py")


@dataclasses.dataclass(frozen=True)
class Release:
  """A released PyTorch checkpoint (reference `Model` state_dict) and how to evaluate it."""
  file: str            # <dataset>_model_<patch>_<channels>_<blocks>_<layers>_<noise σ>.pth
  config: str          # configs/<file>[:preset]: architecture and the published sampling settings
  image_size: int      # Not in the file name (ImageNet 64 and 128 share the 'imagenet' prefix).
  publisher: str
  fid_stats: str       # The reference statistics file released with it.
  fid: float | None    # As published, sequential sampler, 50 k samples; None: not found.
  fid_source: str


_GSJ = "GS-Jacobi authors (huggingface.co/encoreus/Transformer_Autoregressive_Flow)"
_GSJ_FID = "GS-Jacobi README, '\"For\" FID' row (arXiv 2505.12849)"
RELEASES = (
    Release("afhq_model_8_768_8_8_0.07.pth", "afhq256.py", 256,
            "Apple (ml-site.cdn-apple.com/models/tarflow/afhq256/, linked from ml-tarflow)",
            "afhq_256_fid_stats.pth", 13.60, _GSJ_FID),
    Release("imagenet64_model_2_768_8_8_0.05.pth", "imagenet64.py", 64, _GSJ,
            "imagenet64_64_fid_stats.pth", 14.67, _GSJ_FID),
    Release("imagenet_model_2_768_8_8_0.05.pth", "imagenet64.py:cond", 64, _GSJ,
            "imagenet_64_fid_stats.pth", None,
            "not found: the GS-Jacobi README lists no FID for it; guidance 2.3 is the ml-tarflow "
            "README's example evaluate_fid.py command for this file name"),
    Release("imagenet_model_4_1024_8_8_0.05.pth", "imagenet64.py:cond_p4", 64, _GSJ,
            "imagenet_64_fid_stats.pth", 4.42, _GSJ_FID),
    Release("imagenet_model_4_1024_8_8_0.15.pth", "imagenet128.py", 128, _GSJ,
            "imagenet_128_fid_stats.pth", 5.06, _GSJ_FID),
)

_RELEASE_NAME = re.compile(r"(?P<dataset>[a-z0-9]+)_model_(?P<patch_size>\d+)_(?P<channels>\d+)_"
                           r"(?P<num_blocks>\d+)_(?P<layers_per_block>\d+)_(?P<noise_std>[\d.]+)"
                           r"\.pth")
# The reference's dataset names → classes (its utils.get_num_classes).
REFERENCE_CLASSES = {"imagenet64": 0, "imagenet": 1000, "afhq": 3}


def parse_release_name(file_name: str) -> dict:
  """'afhq_model_8_768_8_8_0.07.pth' → {'dataset': 'afhq', 'patch_size': 8, ..., 'noise_std':
  0.07, 'num_classes': 3}; ValueError for a name outside the reference's pattern."""
  match = _RELEASE_NAME.fullmatch(file_name.rsplit("/", 1)[-1])
  if not match or match["dataset"] not in REFERENCE_CLASSES:
    raise ValueError(f"{file_name!r} is not a reference checkpoint name "
                     "(<dataset>_model_<patch>_<channels>_<blocks>_<layers>_<noise σ>.pth)")
  fields = {k: int(v) for k, v in match.groupdict().items() if k not in ("dataset", "noise_std")}
  return {"dataset": match["dataset"], **fields, "noise_std": float(match["noise_std"]),
          "num_classes": REFERENCE_CLASSES[match["dataset"]]}


def config_for_release(file_name: str) -> str:
  """The config preset of a released checkpoint ('configs/' relative), by its file name."""
  name = file_name.rsplit("/", 1)[-1]
  for release in RELEASES:
    if release.file == name:
      return release.config
  raise ValueError(f"{name!r} is not a released checkpoint this project knows; known: "
                   f"{', '.join(r.file for r in RELEASES)}")
