#!/usr/bin/env bash
# TensorBoard on this machine, reading the run's events straight from the gs:// workdir.
#   launch/tpu_tensorboard.sh --workdir=gs://B/in64 [--dry-run]
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
run tensorboard --logdir="$WORKDIR" --port=6006
