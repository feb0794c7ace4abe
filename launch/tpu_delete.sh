#!/usr/bin/env bash
# Deletes the slice and its queued resource.
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
run gcloud compute tpus queued-resources delete "$TPU" --project="$PROJECT" --zone="$ZONE" \
  --force --quiet
