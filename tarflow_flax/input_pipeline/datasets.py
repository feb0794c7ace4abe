"""The datasets `config.data.name` can select: one table, read by config validation and the sources.

A new dataset is one entry here (and, for a project builder, its class in builders.py).
Nothing heavy is imported: config validation reads this table before any data library loads.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Dataset:
  """How one dataset is built and what it has.

  tfds_name: a TFDS builder (`tfds.builder(tfds_name)`); None for a project builder.
  project_builder: the class name of a project builder in `input_pipeline/builders.py`.
  splits: the splits the builder writes (checked before anything is built); empty: read from the
    data itself (a user's folder).
  manual_files: the archives the build reads from `config.data.manual_dir`, by the exact names
    TFDS looks for (sizes and checksums come from the builder's checksums.tsv).
  """
  tfds_name: str | None = None
  project_builder: str | None = None
  splits: tuple[str, ...] = ()
  manual_files: tuple[str, ...] = ()


DATASETS: dict[str, Dataset] = {
    # 4,500 + 500 digits shipped with the package (the default run's data).
    "mnist_embedded": Dataset(project_builder="MnistEmbedded", splits=("train", "test")),
    # van den Oord et al.'s 64x64 ImageNet, the bits/dim benchmark.
    "downsampled_imagenet": Dataset(tfds_name="downsampled_imagenet/64x64",
                                    splits=("train", "validation"),
                                    manual_files=("train_64x64.tar", "valid_64x64.tar")),
    "imagenet2012": Dataset(tfds_name="imagenet2012", splits=("train", "validation", "test"),
                            manual_files=("ILSVRC2012_img_train.tar",
                                          "ILSVRC2012_img_val.tar")),
    # Chrabaszcz et al.'s 64x64 ImageNet (box-resized, with labels).
    "imagenet_resized": Dataset(tfds_name="imagenet_resized/64x64",
                                splits=("train", "validation"),
                                manual_files=("Imagenet64_train_part1_npz.zip",
                                              "Imagenet64_train_part2_npz.zip",
                                              "Imagenet64_val_npz.zip")),
    # No archives: a prepared TFDS data_dir (nothing is downloaded here).
    "cifar10": Dataset(tfds_name="cifar10", splits=("train", "test")),
    # One subfolder per class under config.data.manual_dir; splits are its subfolders.
    "image_folder": Dataset(project_builder="ImageFolder"),
}


def names() -> tuple[str, ...]:
  """Every value `config.data.name` may take."""
  return tuple(DATASETS)
