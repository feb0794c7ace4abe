#!/usr/bin/env bash
# Creates a TPU VM or pod slice through a queued resource and waits until it is ACTIVE.
#   launch/tpu_create.sh --accelerator=v5litepod-64 --tpu=tarflow --zone=us-west4-a [--spot] [--dry-run]
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
SPOT=()
for arg in "${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}"; do
  [[ "$arg" == --spot ]] && SPOT=(--spot)
done
run gcloud compute tpus queued-resources create "$TPU" --node-id="$TPU" \
  --project="$PROJECT" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
  --runtime-version="$RUNTIME" "${SPOT[@]+"${SPOT[@]}"}"
if [[ "$DRY_RUN" != 1 ]]; then
  until gcloud compute tpus queued-resources describe "$TPU" --project="$PROJECT" \
      --zone="$ZONE" --format='value(state.state)' | grep -q ACTIVE; do
    echo "waiting for $TPU to become ACTIVE..."
    sleep 30
  done
fi
