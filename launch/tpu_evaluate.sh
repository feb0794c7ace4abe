#!/usr/bin/env bash
# Exact bits/dim over a whole split (or FID of a samples directory) on every worker.
#   launch/tpu_evaluate.sh --config=configs/imagenet64.py:likelihood --workdir=gs://B/in64 \
#       --metric=bpd --split=validation --num_dequant=4
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
on_all_workers "cd ~/tarflow_flax && $(job_command evaluate "${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}")"
