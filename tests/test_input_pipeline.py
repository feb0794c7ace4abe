"""Input pipeline: datasets built offline, disjoint per-process shares, determinism, exact resume."""

import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import REPO, job_env, tiny_config
from tarflow_flax import config_lib
from tarflow_flax import input_pipeline as ip
from tarflow_flax.input_pipeline import builders, datasets, device_transforms, preprocessing
from tarflow_flax.input_pipeline import sources


def _take(iterator, k):
  return [next(iterator) for _ in range(k)]


def test_embedded_mnist_is_real_and_preprocessed():
  config = tiny_config(**{"image_size": 32, "data.noise_std": 0.0})
  source, info = ip.data_source(config.data, "train")
  assert len(source) == 4500 and info.features["label"].num_classes == 10
  batch = next(ip.create_train_iterator(config))
  # uint8 digits padded to 32x32 cross to the device; the noise is drawn there.
  assert batch["image"].shape == (8, 32, 32, 1) and batch["image"].dtype == np.uint8
  assert batch["image"].max() > 200 and np.all(batch["image"][:, :2] == 0)  # The padding.
  assert batch["label"].dtype == np.int32 and np.all(batch["label"] == 0)  # Unconditional.
  assert batch["index"].dtype == np.uint32 and len(set(batch["index"].tolist())) == 8
  # σ = 0: the device's images are the digits on the 256-level grid in [-1, 1].
  x = np.asarray(device_transforms.noised_images(batch["image"], batch["index"], seed=0,
                                             noise_type="gaussian", noise_std=0.0))
  np.testing.assert_allclose(x, batch["image"] / 127.5 - 1.0, atol=1e-6)


@pytest.mark.parametrize("noise_type", ["gaussian", "uniform"])
def test_device_noise_is_a_function_of_seed_and_example_index(noise_type):
  images = np.full((3, 4, 4, 1), 128, np.uint8)
  noised = lambda idx, seed=0: np.asarray(device_transforms.noised_images(
      images, np.asarray(idx, np.uint32), seed=seed, noise_type=noise_type, noise_std=0.05))
  a = noised([5, 6, 7])
  # The same example index gets the same noise in any batch position; other indices differ.
  np.testing.assert_array_equal(noised([7, 5, 9])[1], a[0])
  np.testing.assert_array_equal(noised([7, 5, 9])[0], a[2])
  assert not np.array_equal(a[0], a[1]) and not np.array_equal(noised([5, 6, 7], seed=1), a)
  if noise_type == "uniform":  # Dequantization: inside the pixel's bin [128, 129)/256·2 − 1.
    assert np.all((a >= 0.0) & (a < 2 / 256))
  else:
    assert 0.02 < np.std(a - (128 / 127.5 - 1)) < 0.08


@pytest.mark.parametrize("noise_type", ["gaussian", "uniform"])
def test_train_and_evaluation_noise_are_one_transform(noise_type):
  """The train step's per-example noise and the evaluations' per-batch noise are the same
  transform of a standard draw: the formulas of docs/numerics.md §4 and §10."""
  images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1) * 7
  key = jax.random.key(3)
  draw = np.asarray(device_transforms.standard_draw(key, images.shape, noise_type))
  expected = (((images.astype(np.float32) + draw) / 256) * 2 - 1 if noise_type == "uniform"
              else images.astype(np.float32) / 127.5 - 1.0 + np.float32(0.1) * draw)
  batch = device_transforms.noised_batch(images, key, noise_type=noise_type, noise_std=0.1)
  np.testing.assert_array_equal(np.asarray(batch), expected)
  # The train step: example i's draw comes from its own key, through the same transform.
  base = jax.random.fold_in(jax.random.key(0), device_transforms.NOISE_SALT)
  own = jax.random.fold_in(base, 9)
  row = device_transforms.noised_images(images[:1], np.asarray([9], np.uint32), seed=0,
                                        noise_type=noise_type, noise_std=0.1)
  single = device_transforms.noised_batch(images[0], own, noise_type=noise_type, noise_std=0.1)
  np.testing.assert_array_equal(np.asarray(row[0]), np.asarray(single))


def test_dataset_table_is_what_validation_and_sources_read(monkeypatch, tmp_path):
  for name, dataset in datasets.DATASETS.items():
    assert bool(dataset.tfds_name) != bool(dataset.project_builder), name
    if dataset.project_builder:
      assert issubclass(getattr(builders, dataset.project_builder), tfds.core.DatasetBuilder)
    else:  # A TFDS builder known to the installed TFDS, without building anything.
      config = tiny_config(**{"data.name": name, "data.data_dir": str(tmp_path)})
      assert sources.builder_for(config.data).name == dataset.tfds_name.split("/")[0]
  with pytest.raises(config_lib.ConfigError, match="data.name='my_set'"):
    config_lib.validate(tiny_config(**{"data.name": "my_set"}))
  # A new entry is all a dataset needs to pass validation and reach its builder.
  monkeypatch.setitem(datasets.DATASETS, "my_set", datasets.Dataset(tfds_name="cifar10",
                                                                     splits=("train", "test")))
  config = tiny_config(**{"data.name": "my_set", "data.data_dir": str(tmp_path)})
  config_lib.validate(config)
  assert sources.builder_for(config.data).name == "cifar10"
  with pytest.raises(ValueError, match="my_set has no split 'validation'"):
    sources.check_split(config.data, "validation")


def test_same_seed_same_batches_other_seed_other_order():
  config = tiny_config()
  a = _take(ip.create_train_iterator(config), 3)
  b = _take(ip.create_train_iterator(config), 3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
  config.seed = 1
  c = _take(ip.create_train_iterator(config), 3)
  assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_resume_from_saved_state_gives_the_uninterrupted_batches():
  config = tiny_config(**{"model.num_classes": 10, "data.random_flip": True})
  straight = _take(ip.create_train_iterator(config), 7)
  first = ip.create_train_iterator(config)
  _take(first, 4)
  state = first.get_state()
  assert len(str(state)) < 200  # A few bytes, not a shuffle buffer.
  fresh = ip.create_train_iterator(config)
  fresh.set_state(state)
  for want, got in zip(straight[4:], _take(fresh, 3)):
    np.testing.assert_array_equal(want["image"], got["image"])
    np.testing.assert_array_equal(want["label"], got["label"])


def test_process_shares_are_disjoint_and_rebuild_the_global_batches():
  config = tiny_config(**{"data.noise_std": 0.0})
  whole = _take(ip.create_train_iterator(config, process_index=0, process_count=1), 4)
  shares = [_take(ip.create_train_iterator(config, process_index=p, process_count=4), 4)
            for p in range(4)]
  for step in range(4):
    rebuilt = np.concatenate([shares[p][step]["image"] for p in range(4)])
    np.testing.assert_array_equal(rebuilt, whole[step]["image"])
  # Over one epoch every example appears once: the shares are disjoint and cover the split.
  config.batch_size = 500
  seen = []
  for p in range(4):
    it = ip.create_train_iterator(config, process_index=p, process_count=4)
    seen += [img.tobytes() for b in _take(it, 9) for img in b["image"]]
  source, _ = ip.data_source(config.data, "train")
  split = {preprocessing.resize_and_crop(np.asarray(source[i]["image"]), 16).tobytes()
           for i in range(len(source))}
  assert len(seen) == 4500 and set(seen) == split


def test_eval_input_covers_the_split_exactly_once_with_padding():
  config = tiny_config(**{"batch_size": 12})
  source, _ = ip.data_source(config.data, "test")
  count, batches_per_process = 0, []
  for p in range(3):
    batches = list(ip.create_eval_iterator(config, process_index=p, process_count=3))
    batches_per_process.append(len(batches))
    for b in batches:
      assert b["image_uint8"].dtype == np.uint8 and b["image_uint8"].shape == (4, 16, 16, 1)
      count += int(b["mask"].sum())
      assert np.all(b["image_uint8"][~b["mask"]] == 0)
  assert count == len(source) == 500
  assert len(set(batches_per_process)) == 1  # Same number of (collective) steps everywhere.


def test_uniform_dequantization_matches_the_reference_op_order():
  x = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
  u = np.random.default_rng(0).random(x.shape, dtype=np.float32)
  np.testing.assert_array_equal(device_transforms.dequantize(x, u),
                                ((x.astype(np.float32) + u) / 256) * 2 - 1)
  config = tiny_config(**{"data.noise_type": "uniform"})
  batch = next(ip.create_train_iterator(config))
  x = np.asarray(device_transforms.noised_images(batch["image"], batch["index"], seed=0,
                                             noise_type="uniform", noise_std=0.0))
  assert -1.0 <= x.min() and x.max() < 1.0


def test_label_dropout_only_for_conditional_models():
  config = tiny_config(**{"model.num_classes": 10, "data.drop_label": 0.5, "batch_size": 64})
  labels = np.concatenate([b["label"] for b in _take(ip.create_train_iterator(config), 4)])
  assert 0.3 < np.mean(labels == -1) < 0.7 and labels.max() <= 9
  assert len(set(labels[labels >= 0].tolist())) > 5


def _write_image_folder(root, sizes):
  from PIL import Image
  rng = np.random.default_rng(0)
  images = {}
  for cls, (h, w) in zip(["cat", "dog"], sizes):
    os.makedirs(root / cls)
    for i in range(3):
      pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(root / cls / f"{i}.png")
      images[(cls, i)] = pixels
  return images


def test_image_folder_is_lossless_at_size_and_resized_otherwise(tmp_path):
  images = _write_image_folder(tmp_path / "afhq", [(16, 16), (16, 16)])
  config = tiny_config(**{"data.name": "image_folder", "data.manual_dir": str(tmp_path / "afhq"),
                          "model.in_channels": 3, "model.num_classes": 2,
                          "data.eval_split": "train", "batch_size": 6})
  batch = next(ip.create_eval_iterator(config))
  got = {img.tobytes() for img in batch["image_uint8"]}
  assert got == {img.tobytes() for img in images.values()}
  assert sorted(batch["label"].tolist()) == [0, 0, 0, 1, 1, 1]
  big = _write_image_folder(tmp_path / "big", [(40, 24), (24, 40)])
  del big
  config.data.manual_dir = str(tmp_path / "big")
  batch = next(ip.create_eval_iterator(config))
  assert batch["image_uint8"].shape == (6, 16, 16, 3)


def test_missing_manual_dir_and_wrong_channels_are_clear_errors(tmp_path):
  config = tiny_config(**{"data.name": "downsampled_imagenet",
                          "data.manual_dir": str(tmp_path / "nowhere")})
  with pytest.raises(FileNotFoundError, match="train_64x64.tar and valid_64x64.tar"):
    ip.create_train_iterator(config)
  config = tiny_config(**{"data.name": "image_folder", "data.manual_dir": str(tmp_path / "x")})
  with pytest.raises(FileNotFoundError, match="not a directory"):
    ip.create_train_iterator(config)
  _write_image_folder(tmp_path / "rgb", [(16, 16), (16, 16)])
  config = tiny_config(**{"data.name": "image_folder", "data.manual_dir": str(tmp_path / "rgb")})
  with pytest.raises(ValueError, match="in_channels=1 does not fit the 3-channel images"):
    ip.create_train_iterator(config)
  (tmp_path / "broken" / "cat").mkdir(parents=True)
  (tmp_path / "broken" / "cat" / "0.png").write_bytes(b"not a png")
  config = tiny_config(**{"data.name": "image_folder", "data.manual_dir": str(tmp_path / "broken"),
                          "model.in_channels": 3})
  with pytest.raises(ValueError, match=r"cannot decode .*0.png"):
    ip.create_train_iterator(config)
  config = tiny_config(**{"batch_size": 7})
  with pytest.raises(ValueError, match="divisible by the 2 processes"):
    ip.create_train_iterator(config, process_index=0, process_count=2)


@pytest.mark.parametrize("name,size,channels,classes", [
    ("cifar10", 32, 3, 10),
    ("imagenet_resized", 64, 3, 1000),
    ("downsampled_imagenet", 64, 3, 0),
    ("imagenet2012", 32, 3, 1000),  # Random source sizes: resized and centre-cropped.
])
def test_tfds_datasets_through_mock_data(name, size, channels, classes, tmp_path):
  config = tiny_config(**{"data.name": name, "data.manual_dir": str(tmp_path), "image_size": size, "model.in_channels": channels,
                          "model.num_classes": classes, "model.patch_size": 8,
                          "data.eval_split": "validation" if name != "cifar10" else "test"})
  # The build is mocked, but the archives are checked first: sparse stand-ins of their sizes.
  expected = sources.expected_archives(sources.builder_for(config.data))
  for file_name in datasets.DATASETS[name].manual_files:
    with open(tmp_path / file_name, "wb") as f:
      f.truncate(int(expected[file_name].size) if file_name in expected else 0)
  with tfds.testing.mock_data(num_examples=20):
    batch = next(ip.create_train_iterator(config))
    assert batch["image"].shape == (8, size, size, channels)
    evaluated = sum(int(b["mask"].sum()) for b in ip.create_eval_iterator(config))
  assert evaluated == 20


def test_changed_image_folder_is_built_again_and_empty_folder_is_one_line(tmp_path):
  _write_image_folder(tmp_path / "pets", [(16, 16), (16, 16)])
  config = tiny_config(**{"data.name": "image_folder", "data.manual_dir": str(tmp_path / "pets"),
                          "data.data_dir": str(tmp_path / "tfds")})
  source, info = ip.data_source(config.data, "train")
  assert len(source) == 6 and info.features["label"].names == ["cat", "dog"]
  from PIL import Image
  (tmp_path / "pets" / "fox").mkdir()
  Image.new("RGB", (16, 16)).save(tmp_path / "pets" / "fox" / "0.png")
  source, info = ip.data_source(config.data, "train")
  assert len(source) == 7 and info.features["label"].names == ["cat", "dog", "fox"]
  assert len(list((tmp_path / "tfds").iterdir())) == 2  # One build per folder content.
  (tmp_path / "empty").mkdir()
  config.data.manual_dir = str(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match=r"^image_folder: no class subfolders in .*empty"):
    ip.data_source(config.data, "train")
  (tmp_path / "empty" / "cat").mkdir()
  with pytest.raises(FileNotFoundError, match=r"^image_folder: no images \(.*\) under .*empty$"):
    ip.data_source(config.data, "train")


def test_split_check_needs_no_build(tmp_path):
  config = tiny_config(**{"data.data_dir": str(tmp_path / "tfds")})
  ip.check_split(config.data, "test[:50%]")
  with pytest.raises(ValueError, match=r"mnist_embedded has no split 'validation'; it has "
                                       r"\['test', 'train'\]"):
    ip.check_split(config.data, "validation")
  assert not (tmp_path / "tfds").exists()  # Answered without preparing anything.
  _write_image_folder(tmp_path / "pets", [(16, 16), (16, 16)])
  config = tiny_config(**{"data.name": "image_folder", "data.manual_dir": str(tmp_path / "pets")})
  with pytest.raises(ValueError, match=r"image_folder has no split 'test'; it has \['train'\]"):
    ip.check_split(config.data, "test")
  ip.data_source(config.data, "train")
  with pytest.raises(ValueError, match="no split 'test'"):  # Now from the prepared info.
    ip.check_split(config.data, "test")


_PREPARE_IN_A_PROCESS = textwrap.dedent("""
    import sys
    import jax
    from tarflow_flax import config_lib
    from tarflow_flax.input_pipeline import builders, sources

    port, process_id, data_dir, folder = sys.argv[1:]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(process_id))
    generate = builders.ImageFolder._split_generators
    def counted(self, dl_manager):  # Runs once per build of the dataset.
      print("BUILD", flush=True)
      return generate(self, dl_manager)
    builders.ImageFolder._split_generators = counted
    config = config_lib.base_config()
    config.data.name, config.data.data_dir = "image_folder", data_dir
    config.data.manual_dir = folder
    source, _ = sources.data_source(config.data, "train")
    print("READ", len(source), flush=True)
    config.data.name, config.data.manual_dir = "downsampled_imagenet", data_dir + "/nothing"
    try:  # Process 0 fails to build; the others must hear why instead of waiting.
      sources.data_source(config.data, "train")
    except (ValueError, FileNotFoundError) as e:
      print("ERROR", type(e).__name__, str(e), flush=True)
""")


def test_two_processes_sharing_an_empty_data_dir_build_once_and_share_failures(tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  _write_image_folder(tmp_path / "pets", [(16, 16), (16, 16)])
  env = job_env(1, JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-c", _PREPARE_IN_A_PROCESS, str(port), str(i),
                             str(tmp_path / "tfds"), str(tmp_path / "pets")], cwd=REPO, env=env,
                            text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
  outputs = [p.communicate(timeout=240)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
    assert "READ 6" in out.splitlines(), out[-3000:]
  assert [out.splitlines().count("BUILD") for out in outputs] == [1, 0]
  errors = [[l for l in out.splitlines() if l.startswith("ERROR")] for out in outputs]
  assert errors[0][0].startswith("ERROR FileNotFoundError downsampled_imagenet is not prepared")
  assert errors[1][0].startswith("ERROR DataError process 0 could not prepare "
                                 "downsampled_imagenet: FileNotFoundError: downsampled_imagenet "
                                 "is not prepared"), errors
