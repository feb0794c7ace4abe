#!/usr/bin/env bash
# Shared flag parsing for the launch scripts. Every script accepts:
#   --dry-run            print the commands instead of running them
#   --project=P --zone=Z --tpu=NAME --accelerator=TYPE --runtime=VERSION
#   --config=configs/X.py[:preset] --workdir=gs://BUCKET/DIR
# and the same settings from the environment (TPU_PROJECT, TPU_ZONE, TPU_NAME, ...; also
# TARFLOW_PYTHON_VERSION and TARFLOW_DIST_FLAGS).
# Variables set here are read by the scripts that source this file.
# shellcheck disable=SC2034
set -euo pipefail

DRY_RUN="${DRY_RUN:-0}"
PROJECT="${TPU_PROJECT:-my-project}"
ZONE="${TPU_ZONE:-us-central2-b}"
TPU="${TPU_NAME:-tarflow}"
ACCELERATOR="${TPU_ACCELERATOR:-v4-64}"
RUNTIME="${TPU_RUNTIME:-tpu-ubuntu2204-base}"
CONFIG="${TARFLOW_CONFIG:-configs/imagenet64.py}"
WORKDIR="${TARFLOW_WORKDIR:-gs://my-bucket/tarflow/imagenet64}"
EXTRA_ARGS=()
# The TPU VM images ship Python 3.10; the package needs >= 3.11, so the install script puts a
# uv-managed interpreter and a virtual environment on every worker, and every job runs with it.
PYTHON_VERSION="${TARFLOW_PYTHON_VERSION:-3.11}"
UV_VERSION="0.13.9"
VENV="\$HOME/tarflow_venv"  # Expanded by the worker's shell.
# Flags of every job. --distributed=true: jax.distributed discovers the slice's workers itself,
# and a failed discovery stops the job instead of starting one single-host job per worker.
DIST_FLAGS="${TARFLOW_DIST_FLAGS:---distributed=true}"
# Share of each GPU's memory JAX's client preallocates and may use (JAX's default: 0.75).
GPU_MEMORY_FRACTION=0.95

parse_common_flags() {
  for arg in "$@"; do
    case "$arg" in
      --dry-run) DRY_RUN=1 ;;
      --project=*) PROJECT="${arg#*=}" ;;
      --zone=*) ZONE="${arg#*=}" ;;
      --tpu=*) TPU="${arg#*=}" ;;
      --accelerator=*) ACCELERATOR="${arg#*=}" ;;
      --runtime=*) RUNTIME="${arg#*=}" ;;
      --config=*) CONFIG="${arg#*=}" ;;
      --workdir=*) WORKDIR="${arg#*=}" ;;
      *) EXTRA_ARGS+=("$arg") ;;
    esac
  done
}

# Prints the command (shell-quoted), then runs it unless --dry-run.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if [[ "$DRY_RUN" != 1 ]]; then
    "$@"
  fi
}

# `python -m tarflow_flax.MODULE` for a worker (run it in ~/tarflow_flax) with the venv's Python:
# RAW_FLAGS as they are (several flags in one string), then the arguments, shell-quoted.
python_command() {
  local module="$1" raw="$2" cmd arg
  shift 2
  cmd="$VENV/bin/python -m tarflow_flax.$module${raw:+ $raw}"
  for arg in "$@"; do
    cmd+=" $(printf '%q' "$arg")"
  done
  printf '%s' "$cmd"
}

# A job of the whole slice: the distributed flags, --config/--workdir and the remaining arguments.
job_command() {
  local module="$1"
  shift
  python_command "$module" "$DIST_FLAGS" "--config=$CONFIG" "--workdir=$WORKDIR" "$@"
}

# Runs a shell command on every worker of the TPU slice.
on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU" --project="$PROJECT" --zone="$ZONE" --worker=all \
    --command="$1"
}

# Runs a shell command on one worker of the TPU slice (0 when not given).
on_one_worker() {
  run gcloud compute tpus tpu-vm ssh "$TPU" --project="$PROJECT" --zone="$ZONE" \
    --worker="${2:-0}" --command="$1"
}
