#!/usr/bin/env bash
# Starts training on every worker of the slice (jax.distributed finds the peers on Cloud TPU).
# Re-running the same command resumes from the last checkpoint in the workdir.
#   launch/tpu_train.sh --config=configs/imagenet64.py:likelihood --workdir=gs://B/in64 \
#       --config.data.data_dir=gs://B/tfds [--config.x=y]
# The data_dir is a bucket that tpu_prepare.sh filled (every worker reads it; nothing writes it).
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
on_all_workers "cd ~/tarflow_flax && nohup $(job_command main "${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}") \
> ~/train.log 2>&1 &"
