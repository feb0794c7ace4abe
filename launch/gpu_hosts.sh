#!/usr/bin/env bash
# Several GPU hosts: run this on every host, one process per host driving all its GPUs; the mesh
# spans every GPU of every host (host-major, so `mesh.fsdp` up to 8 stays inside a host's NVLink).
# Install first on each host (launch/gpu_host.sh's pip line, or pip install -e ".[gpu]").
#   SLURM, one task per node (jax.distributed reads the SLURM environment):
#     srun --nodes=2 --ntasks-per-node=1 launch/gpu_hosts.sh --config=configs/imagenet64.py \
#         --workdir=gs://BUCKET/in64
#   Elsewhere, on host I of N (HOST0: the first host's address, the same port everywhere):
#     launch/gpu_hosts.sh --coordinator_address=HOST0:8476 --num_processes=N --process_id=I \
#         --config=configs/imagenet64.py --workdir=gs://BUCKET/in64
# Check the step first on a machine without GPUs:
#   XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 python -m tarflow_flax.compile_check \
#       --config=configs/imagenet64.py --topology=h100:1xNx8
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
# shellcheck disable=SC2086  # DIST_FLAGS holds several flags.
run env XLA_PYTHON_CLIENT_MEM_FRACTION="$GPU_MEMORY_FRACTION" python3 -m tarflow_flax.main \
  $DIST_FLAGS --config="$CONFIG" --workdir="$WORKDIR" "${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}"
