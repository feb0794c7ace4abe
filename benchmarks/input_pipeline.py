"""Input-pipeline benchmark: images/s per host at a realistic per-host batch on fake data.

  python benchmarks/input_pipeline.py [--batches=20] [--per_host_batch=128] [--threads=1,4,16]
      [--bucket] [--json=F]

Builds fake ImageNet-like image folders (PNG, 64x64 and 160x120 sources) once in a temporary
directory, then times `create_train_iterator` (decode, resize/crop, flip, uint8 batch; the noise
is drawn on the device) for 64x64 (lossless, no resize) and 128x128 (resize + centre crop)
training, for each number of grain read threads (config.data.num_workers). With --bucket the
64x64 dataset is also prepared into a local GCS emulator (`tarflow_flax.prepare`) and read from
gs:// the way a pod reads its bucket: the ratio column is bucket / local at the same threads,
measured in the same run. A table and JSON.
"""

import contextlib
import os
import tempfile
import time

import numpy as np
from absl import app, flags

import common  # benchmarks/common.py (the script's own folder is on sys.path)
from tarflow_flax import config_lib, gcs_emulator, prepare_lib
from tarflow_flax import input_pipeline as ip

_BATCHES = flags.DEFINE_integer("batches", 20, "Timed batches per case (after 2 warm-up).")
_PER_HOST = flags.DEFINE_integer("per_host_batch", 128, "Per-host batch size.")
_IMAGES = flags.DEFINE_integer("images", 512, "Fake images per dataset.")
_THREADS = flags.DEFINE_list("threads", ["1", "4"], "grain read threads (config.data.num_workers), "
                             "one row each.")
_BUCKET = flags.DEFINE_bool("bucket", True, "Also read the 64x64 set from a gs:// data_dir (a "
                            "local GCS emulator: the `test` extra's fake-gcs-server).")
_JSON = flags.DEFINE_string("json", None, "Also write the JSON result here.")


def fake_folder(root, count, height, width):
  from PIL import Image
  rng = np.random.default_rng(0)
  for c in range(4):
    os.makedirs(os.path.join(root, f"class{c}"), exist_ok=True)
  for i in range(count):
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(os.path.join(root, f"class{i % 4}", f"{i}.png"))


def _config(folder, data_dir, image_size, threads):
  c = config_lib.base_config()
  c.image_size = image_size
  c.model.in_channels, c.model.num_classes = 3, 4
  c.data.name, c.data.manual_dir, c.data.data_dir = "image_folder", folder, data_dir
  c.data.random_flip, c.data.num_workers = True, threads
  c.batch_size = _PER_HOST.value
  return c


def run_case(name, source, config):
  iterator = ip.create_train_iterator(config, process_index=0, process_count=1)
  for _ in range(2):
    next(iterator)
  start = time.perf_counter()
  for _ in range(_BATCHES.value):
    batch = next(iterator)
  seconds = time.perf_counter() - start
  size = config.image_size
  assert batch["image"].shape == (_PER_HOST.value, size, size, 3)
  return {"case": name, "source": source, "threads": config.data.num_workers,
          "per_host_batch": _PER_HOST.value,
          "images_per_s": _BATCHES.value * _PER_HOST.value / seconds,
          "ms_per_batch": 1e3 * seconds / _BATCHES.value}


def main(argv):
  del argv
  threads = [int(t) for t in _THREADS.value]
  rows = []
  with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
    if _BUCKET.value:  # Before any gs:// access: the clients read these variables once.
      os.environ.update(stack.enter_context(
          gcs_emulator.running(os.path.join(tmp, "gcs.log"), "bench")))
    in64, in128, local = (os.path.join(tmp, d) for d in ("in64", "in128", "tfds"))
    fake_folder(in64, _IMAGES.value, 64, 64)
    fake_folder(in128, _IMAGES.value, 120, 160)
    if _BUCKET.value:
      prepare_lib.prepare_dataset(_config(in64, "gs://bench/tfds", 64, 1).data, staging_dir=local)
    for n in threads:
      rows.append(run_case("imagenet64 (64x64 PNG, no resize)", "local",
                           _config(in64, local, 64, n)))
      if _BUCKET.value:
        rows.append(run_case("imagenet64 (64x64 PNG, no resize)", "gs://",
                             _config(in64, "gs://bench/tfds", 64, n)))
        rows[-1]["vs_local"] = rows[-1]["images_per_s"] / rows[-2]["images_per_s"]
      rows.append(run_case("imagenet128 (160x120 PNG → resize+crop)", "local",
                           _config(in128, local, 128, n)))
  print(f"{'case':<42} {'source':>6} {'threads':>7} {'batch':>6} {'images/s':>10} "
        f"{'ms/batch':>9} {'vs local':>8}")
  for r in rows:
    ratio = f"{r['vs_local']:.2f}" if "vs_local" in r else ""
    print(f"{r['case']:<42} {r['source']:>6} {r['threads']:>7} {r['per_host_batch']:>6} "
          f"{r['images_per_s']:>10.1f} {r['ms_per_batch']:>9.1f} {ratio:>8}")
  common.emit_json({"cpus": os.cpu_count(), "rows": rows}, _JSON.value)


if __name__ == "__main__":
  app.run(main)
