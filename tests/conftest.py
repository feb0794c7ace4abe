"""Shared test helpers: golden reference files and randomised tiny models."""

import glob
import os

# Tests compile hundreds of small programs and run each only briefly: LLVM's O0 backend compiles
# them about a third faster (a tiny model's init 6.1 → 3.9 s, its train step 6.4 → 4.2 s). XLA's
# HLO passes are unchanged; every tolerance in the suite holds with it.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a test process with `devices` fake CPU devices."""
  return f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}"


def job_env(devices: int, **extra: str) -> dict[str, str]:
  """The environment of a job a test starts: `devices` fake CPU devices, the tests' XLA flags."""
  return {**os.environ, "XLA_FLAGS": xla_flags(devices), **extra}


# Multi-device code is tested on 8 fake CPU devices; must be set before jax is imported.
os.environ.setdefault("XLA_FLAGS", xla_flags(8))
# Tests run on the CPU even where libtpu is installed (the `tpu` extra): no TPU probing.
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _temporary_dir_in_env(name: str, prefix: str) -> bool:
  """Sets $name to a new temporary folder, removed when this process exits, unless it is set
  already (by the user, or inherited from the process that made it). True if made here."""
  if name in os.environ:
    return False
  import atexit  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  os.environ[name] = tempfile.mkdtemp(prefix=prefix)
  atexit.register(shutil.rmtree, os.environ[name], ignore_errors=True)
  return True


# Both folders are made by the first process that imports this file (pytest's main process,
# before xdist starts its workers), so every worker and every job they start shares them.
# One TFDS data_dir for the whole run; the embedded MNIST is built into it right there (end of
# this file), so that workers and their jobs never race to build it.
_PREPARE_DATA = _temporary_dir_in_env("TFDS_DATA_DIR", "tarflow_tfds_")
# JAX's persistent compilation cache: the subprocess tests (gs://, multi-process, resume)
# compile the same steps in every job.
if _temporary_dir_in_env("JAX_COMPILATION_CACHE_DIR", "tarflow_jax_cache_"):
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
import pytest
from flax import nnx

import repo_reads
from tarflow_flax import models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The reference outputs ship in the repository (tests/data/golden/README.md); TARFLOW_GOLDEN_DIR
# points the tests at another set (e.g. more cases made the same way).
GOLDEN_DIR = os.environ.get("TARFLOW_GOLDEN_DIR", os.path.join(REPO, "tests", "data", "golden"))
repo_reads.install(REPO, extra=(GOLDEN_DIR,) if "TARFLOW_GOLDEN_DIR" in os.environ else ())


@pytest.fixture(autouse=True)
def reads_only_the_repository():
  """Fails a test when this process read a file from outside the repository since the previous
  test ended (this test, its fixtures, or collection): a fresh clone has nothing beside it."""
  yield
  outside = repo_reads.take()
  assert not outside, f"files read from outside the repository: {outside[:5]}"


def golden_files():
  """The reference outputs; a missing set fails the tests that need it (never a skip)."""
  files = sorted(glob.glob(os.path.join(GOLDEN_DIR, "*.npz")))
  if not files:
    raise FileNotFoundError(f"no golden .npz files in {GOLDEN_DIR} (set TARFLOW_GOLDEN_DIR)")
  return files


def tiny_model(*, in_channels=1, img_size=8, patch_size=2, channels=64, num_blocks=2,
               layers_per_block=1, nvp=True, num_classes=0, dtype="float32", seed=0,
               scale=0.1, **kwargs) -> models.TarFlow:
  """A small TarFlow whose zero-initialised proj_out is replaced by random weights (so blocks are
  far from the identity) and, for VP models, with a random prior variance."""
  model = models.TarFlow(in_channels=in_channels, img_size=img_size, patch_size=patch_size,
                         channels=channels, num_blocks=num_blocks,
                         layers_per_block=layers_per_block, nvp=nvp, num_classes=num_classes,
                         dtype=dtype, rngs=nnx.Rngs(seed), **kwargs)
  key = jax.random.key(seed + 1)
  for i, block in enumerate(model.blocks):
    k1, k2, k3 = jax.random.split(jax.random.fold_in(key, i), 3)
    kernel = block.proj_out.kernel
    kernel[...] = scale * jax.random.normal(k1, kernel.shape) / np.sqrt(kernel.shape[0])
    block.proj_out.bias[...] = 0.05 * jax.random.normal(k2, block.proj_out.bias.shape)
    block.pos_embed[...] = 0.3 * jax.random.normal(k3, block.pos_embed.shape)
  if not nvp:
    model.var[...] = jax.random.uniform(key, model.var.shape, minval=0.5, maxval=2.0)
  return model


def random_images(n, model, seed=0):
  return jax.random.uniform(jax.random.key(seed), (n, model.img_size, model.img_size,
                                                   model.in_channels), minval=-1.0, maxval=1.0)


def rel_err(actual, expected) -> float:
  expected = np.asarray(expected, np.float64)
  return float(np.max(np.abs(np.asarray(actual, np.float64) - expected)) /
               max(np.max(np.abs(expected)), 1e-30))




def free_port() -> int:
  """A free TCP port on 127.0.0.1 (for jax.distributed coordinators and local test servers)."""
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


BUCKET = "bucket"


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
  """A GCS emulator on 127.0.0.1 with an empty bucket → the environment that points every gs://
  client at it (etils.epath via gcsfs, Orbax's TensorStore, array_record)."""
  from tarflow_flax import gcs_emulator  # pylint: disable=g-import-not-at-top
  with gcs_emulator.running(tmp_path_factory.mktemp("gcs") / "server.log", BUCKET) as env:
    yield env


def gcs_objects(env, prefix: str) -> list[str]:
  """The names of the emulator bucket's objects under `prefix`."""
  from tarflow_flax import gcs_emulator  # pylint: disable=g-import-not-at-top
  return gcs_emulator.objects(env, BUCKET, prefix)


def start_job(module, log, *args, devices: int, process=None, env=None):
  """`python -m tarflow_flax.<module>` in REPO, its output going to `log` (a file, not a pipe:
  nobody blocks on a full pipe); process=(index, count, port) joins a jax.distributed job."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  if process is not None:
    index, count, port = process
    args += (f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={count}",
             f"--process_id={index}")
  return subprocess.Popen([sys.executable, "-m", f"tarflow_flax.{module}", *args], cwd=REPO,
                          env=job_env(devices, **(env or {})), stdout=open(log, "w"),
                          stderr=subprocess.STDOUT)


def wait_job(proc, log, timeout=300) -> int:
  """The job's exit status; a job still running after `timeout` s is killed and fails the test."""
  import subprocess  # pylint: disable=g-import-not-at-top
  try:
    return proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise AssertionError(f"{log} timed out:\n{log.read_text()[-3000:]}")


def tiny_config(**overrides):
  """configs/tiny.py with overrides given as {'model.channels': 64, ...}."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("tiny", os.path.join(REPO, "configs", "tiny.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  from tarflow_flax import config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.override(module.get_config(), overrides)


def tiny_flags(**overrides) -> tuple[str, ...]:
  """The command-line twin of tiny_config(**overrides): --config=configs/tiny.py --config.k=v."""
  return (f"--config={os.path.join(REPO, 'configs', 'tiny.py')}",
          *(f"--config.{key}={value}" for key, value in overrides.items()))


def read_scalars(logdir) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} from the TensorBoard events under `logdir` (last value per step)."""
  # pylint: disable=g-import-not-at-top
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util
  acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"tensors": 0, "images": 0})
  acc.Reload()
  out = {}
  for tag in acc.Tags()["tensors"]:
    values = {e.step: tensor_util.make_ndarray(e.tensor_proto) for e in acc.Tensors(tag)}
    if all(v.size == 1 and v.dtype.kind == "f" for v in values.values()):  # Scalars only.
      out[tag] = {step: float(v) for step, v in values.items()}
  return out


if _PREPARE_DATA:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tarflow_flax import input_pipeline  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()  # Its bars would land in pytest's header.
  input_pipeline.prepare(tiny_config().data)
