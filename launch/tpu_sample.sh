#!/usr/bin/env bash
# Batch sampling on every worker (resumable: re-run to finish missing shards).
#   launch/tpu_sample.sh --workdir=gs://B/in64 --num_samples=50000 --outdir=gs://B/in64/samples
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
ARGS=""
for arg in "${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}"; do
  ARGS+=" $(printf '%q' "$arg")"
done
on_all_workers "cd ~/tarflow_flax && python3 -m tarflow_flax.sample --config=$CONFIG \
--workdir=$WORKDIR$ARGS"
