#!/usr/bin/env bash
# Prepares the config's dataset into a bucket, once, on worker 0 (in the background, log in
# ~/prepare.log: wait for its `done:` line); training on every worker then reads the bucket.
#   launch/tpu_prepare.sh --config=configs/imagenet64.py:likelihood \
#       --config.data.manual_dir=/home/me/archives --config.data.data_dir=gs://B/tfds
# One process, CPU only (JAX_PLATFORMS=cpu: the chips stay free); not a job of the whole slice, so
# neither --distributed nor --workdir. The worker's boot disk holds the archives and the local
# build (--staging_dir); for imagenet2012 (~300 GB) prepare on a CPU VM with a larger disk instead.
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
on_one_worker "cd ~/tarflow_flax && JAX_PLATFORMS=cpu nohup \
$(python_command prepare "" "--config=$CONFIG" "${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}") \
> ~/prepare.log 2>&1 &"
