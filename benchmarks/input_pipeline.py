"""Input-pipeline benchmark: images/s per host at a realistic per-host batch on local fake data.

  python benchmarks/input_pipeline.py [--batches=20] [--per_host_batch=128] [--json=F]

Builds fake ImageNet-like image folders (PNG, 64x64 and 160x120 sources) once in a temporary
directory, then times `create_train_iterator` (decode, resize/crop, flip, uint8 batch; the noise
is drawn on the device) for 64x64 (lossless, no resize) and 128x128 (resize + centre crop)
training. A table and JSON.
"""

import os
import tempfile
import time

import numpy as np
from absl import app, flags

import common  # benchmarks/common.py (the script's own folder is on sys.path)
from tarflow_flax import config_lib
from tarflow_flax import input_pipeline as ip

_BATCHES = flags.DEFINE_integer("batches", 20, "Timed batches per case (after 2 warm-up).")
_PER_HOST = flags.DEFINE_integer("per_host_batch", 128, "Per-host batch size.")
_IMAGES = flags.DEFINE_integer("images", 512, "Fake images per dataset.")
_WORKERS = flags.DEFINE_integer("threads", 4, "grain read threads.")
_JSON = flags.DEFINE_string("json", None, "Also write the JSON result here.")


def fake_folder(root, count, height, width):
  from PIL import Image
  rng = np.random.default_rng(0)
  for c in range(4):
    os.makedirs(os.path.join(root, f"class{c}"), exist_ok=True)
  for i in range(count):
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(os.path.join(root, f"class{i % 4}", f"{i}.png"))


def run_case(name, folder, data_dir, image_size):
  c = config_lib.base_config()
  c.image_size = image_size
  c.model.in_channels, c.model.num_classes = 3, 4
  c.data.name, c.data.manual_dir, c.data.data_dir = "image_folder", folder, data_dir
  c.data.random_flip, c.data.num_workers = True, _WORKERS.value
  c.batch_size = _PER_HOST.value
  iterator = ip.create_train_iterator(c, process_index=0, process_count=1)
  for _ in range(2):
    next(iterator)
  start = time.perf_counter()
  for _ in range(_BATCHES.value):
    batch = next(iterator)
  seconds = time.perf_counter() - start
  assert batch["image"].shape == (_PER_HOST.value, image_size, image_size, 3)
  return {"case": name, "per_host_batch": _PER_HOST.value,
          "images_per_s": _BATCHES.value * _PER_HOST.value / seconds,
          "ms_per_batch": 1e3 * seconds / _BATCHES.value}


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    fake_folder(os.path.join(tmp, "in64"), _IMAGES.value, 64, 64)
    fake_folder(os.path.join(tmp, "in128"), _IMAGES.value, 120, 160)
    rows = [run_case("imagenet64 (64x64 PNG, no resize)", os.path.join(tmp, "in64"),
                     os.path.join(tmp, "tfds"), 64),
            run_case("imagenet128 (160x120 PNG → resize+crop)", os.path.join(tmp, "in128"),
                     os.path.join(tmp, "tfds"), 128)]
  print(f"{'case':<42} {'batch':>6} {'images/s':>10} {'ms/batch':>9}")
  for r in rows:
    print(f"{r['case']:<42} {r['per_host_batch']:>6} {r['images_per_s']:>10.1f} "
          f"{r['ms_per_batch']:>9.1f}")
  result = {"threads": _WORKERS.value, "rows": rows}
  common.emit_json(result, _JSON.value)


if __name__ == "__main__":
  app.run(main)
