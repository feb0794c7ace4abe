#!/usr/bin/env bash
# One GPU host: install with CUDA JAX (the gpu extra) and train (all local GPUs form the mesh).
#   launch/gpu_host.sh --config=configs/imagenet64.py --workdir=/data/runs/in64 [--dry-run]
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
REPO_DIR="$(cd "$(dirname "$0")/.." && pwd)"
run python3 -m pip install -q -e "${REPO_DIR}[gpu]"
run env XLA_PYTHON_CLIENT_MEM_FRACTION="$GPU_MEMORY_FRACTION" python3 -m tarflow_flax.main \
  --config="$CONFIG" --workdir="$WORKDIR" "${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}"
