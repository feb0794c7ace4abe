#!/usr/bin/env bash
# Shared flag parsing for the launch scripts. Every script accepts:
#   --dry-run            print the commands instead of running them
#   --project=P --zone=Z --tpu=NAME --accelerator=TYPE --runtime=VERSION
#   --config=configs/X.py[:preset] --workdir=gs://BUCKET/DIR
# and the same settings from the environment (TPU_PROJECT, TPU_ZONE, TPU_NAME, ...).
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

# Runs a shell command on every worker of the TPU slice.
on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU" --project="$PROJECT" --zone="$ZONE" --worker=all \
    --command="$1"
}
