"""Multi-process jobs on one machine (jax.distributed on 127.0.0.1, fake CPU devices).

- A SIGTERM that reaches one process of two stops both at the same step, with a checkpoint and
  exit status 75; the same commands resume, and the losses equal an uninterrupted run.
- A single process stops on SIGINT the same way.
- The sample job and bits/dim evaluation give the same results on 2 processes × 2 devices as on
  1 process × 1 device, each process computing only its share.
"""

import json
import pathlib
import signal
import time

import numpy as np
import pytest

from conftest import free_port, read_scalars, tiny_config, tiny_flags, tiny_model
from conftest import start_job as _start
from conftest import wait_job as _wait
from tarflow_flax import checkpoint, input_pipeline, runtime, train


def _run_all(jobs, timeout=300) -> list[int]:
  return [_wait(proc, log, timeout) for proc, log in jobs]


def _wait_for_text(log: pathlib.Path, text: str, procs, timeout=240) -> None:
  deadline = time.time() + timeout
  while text not in log.read_text():
    assert all(p.poll() is None for p in procs), log.read_text()[-3000:]
    assert time.time() < deadline, f"no {text!r} in {log}"
    time.sleep(0.05)


STEPS = 40  # ~2 s of training after the signal is sent at step 3 or 5: it lands mid-run.
TRAIN = {"num_train_steps": STEPS, "log_every_steps": 1, "checkpoint_every_steps": 1000}
TRAIN_FLAGS = tiny_flags(**TRAIN)


@pytest.fixture(scope="module", autouse=True)
def prepared_data():
  """The embedded MNIST built once before the jobs start (the jobs of a test run concurrently)."""
  input_pipeline.prepare(tiny_config().data)


def test_sigterm_to_one_process_stops_both_at_one_step_then_resumes(tmp_path):
  port = free_port()
  workdir = f"--workdir={tmp_path / 'multi'}"
  logs = [tmp_path / f"multi{i}.log" for i in range(2)]
  procs = [_start("main", logs[i], *TRAIN_FLAGS, workdir, devices=2, process=(i, 2, port))
           for i in range(2)]
  _wait_for_text(logs[1], f"step 5/{STEPS}", procs)
  procs[1].send_signal(signal.SIGTERM)
  codes = _run_all(zip(procs, logs), timeout=120)
  assert codes == [runtime.EXIT_INTERRUPTED] * 2, [log.read_text()[-2000:] for log in logs]
  saved = checkpoint.manager(tmp_path / "multi" / "checkpoints").all_steps()
  assert len(saved) == 1 and 5 <= saved[0] < STEPS, saved  # One step, agreed by both processes.
  for log in logs:
    assert f"interrupted: stopped at step {saved[0]}" in log.read_text()

  port = free_port()
  procs = [_start("main", logs[i], *TRAIN_FLAGS, workdir, devices=2, process=(i, 2, port))
           for i in range(2)]
  assert _run_all(zip(procs, logs)) == [0, 0], logs[0].read_text()[-3000:]
  assert f"step {saved[0]}" in logs[0].read_text() and "Resumed from" in logs[0].read_text()
  # The uninterrupted run: one process (this one, 8 devices).
  train.train_and_evaluate(tiny_config(**TRAIN), str(tmp_path / "ref"))
  want = read_scalars(tmp_path / "ref")["train/loss"]
  got = read_scalars(tmp_path / "multi")["train/loss"]
  assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([got[s] for s in want], [want[s] for s in want], rtol=1e-5, atol=1e-6)


def test_sigint_stops_a_single_process_with_a_checkpoint(tmp_path):
  log = tmp_path / "run.log"
  proc = _start("main", log, *TRAIN_FLAGS, f"--workdir={tmp_path}", devices=1)
  _wait_for_text(log, f"step 3/{STEPS}", [proc])
  proc.send_signal(signal.SIGINT)
  assert _wait(proc, log, timeout=120) == runtime.EXIT_INTERRUPTED, log.read_text()[-3000:]
  saved = checkpoint.manager(tmp_path / "checkpoints").all_steps()
  assert len(saved) == 1 and 3 <= saved[0] < STEPS
  assert "Traceback" not in log.read_text()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  root = tmp_path_factory.mktemp("ckpt")
  config = tiny_config(**{"model.num_classes": 10, "model.patch_size": 2})
  model = tiny_model(in_channels=1, img_size=16, patch_size=2, channels=64, num_blocks=2,
                     layers_per_block=1, num_classes=10, seed=2)
  checkpoint.save_model_checkpoint(str(root), model, config)
  return root


def test_two_processes_sample_and_evaluate_like_one(ckpt, tmp_path):
  sample = (f"--checkpoint={ckpt}", "--num_samples=6", "--shard_size=4", "--seed=3")
  evaluate = (f"--checkpoint={ckpt}", "--metric=bpd", "--num_batches=3")
  single = [(_start("sample", tmp_path / "s1.log", *sample, f"--outdir={tmp_path / 'one'}",
                    devices=1), tmp_path / "s1.log")]
  assert _run_all(single) == [0], (tmp_path / "s1.log").read_text()[-3000:]
  single = [(_start("evaluate", tmp_path / "e1.log", *evaluate, f"--out={tmp_path / 'e1.json'}",
                    devices=1), tmp_path / "e1.log")]
  assert _run_all(single) == [0], (tmp_path / "e1.log").read_text()[-3000:]

  port = free_port()
  logs = [tmp_path / f"s2_{i}.log" for i in range(2)]
  jobs = [(_start("sample", logs[i], *sample, f"--outdir={tmp_path / 'two'}", devices=2,
                  process=(i, 2, port)), logs[i]) for i in range(2)]
  assert _run_all(jobs) == [0, 0], logs[0].read_text()[-3000:]
  for i, log in enumerate(logs):  # Each process computed the rows of its own 2 devices.
    assert f"process {i} computed 2 of the 4 rows of each batch" in log.read_text()
  for name in ["shard_00000.npz", "shard_00001.npz"]:
    one, two = np.load(tmp_path / "one" / name), np.load(tmp_path / "two" / name)
    np.testing.assert_array_equal(one["images"], two["images"])
    np.testing.assert_array_equal(one["labels"], two["labels"])

  port = free_port()
  logs = [tmp_path / f"e2_{i}.log" for i in range(2)]
  jobs = [(_start("evaluate", logs[i], *evaluate, f"--out={tmp_path / 'e2.json'}",
                  devices=2, process=(i, 2, port)), logs[i]) for i in range(2)]
  assert _run_all(jobs) == [0, 0], logs[0].read_text()[-3000:]
  one = json.loads((tmp_path / "e1.json").read_text())
  two = json.loads((tmp_path / "e2.json").read_text())
  assert one["num_images"] == two["num_images"] > 0
  np.testing.assert_allclose(two["bpd"], one["bpd"], rtol=1e-6)
