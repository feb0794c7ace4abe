#!/usr/bin/env bash
# Batch sampling on every worker (resumable: re-run to finish missing shards).
#   launch/tpu_sample.sh --workdir=gs://B/in64 --num_samples=50000 --outdir=gs://B/in64/samples
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
on_all_workers "cd ~/tarflow_flax && $(job_command sample "${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}")"
