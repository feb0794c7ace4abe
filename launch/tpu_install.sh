#!/usr/bin/env bash
# Copies this repository to every worker and installs it with JAX for TPU.
#   launch/tpu_install.sh --tpu=tarflow [--dry-run]
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
REPO_DIR="$(cd "$(dirname "$0")/.." && pwd)"
run gcloud compute tpus tpu-vm scp --recurse "$REPO_DIR" "$TPU":~/tarflow_flax \
  --project="$PROJECT" --zone="$ZONE" --worker=all
on_all_workers "cd ~/tarflow_flax && python3 -m pip install -q -e . 'jax[tpu]==0.10.2' \
-f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
