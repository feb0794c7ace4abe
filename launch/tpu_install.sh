#!/usr/bin/env bash
# Copies this repository to every worker and installs it, with JAX for TPU (the `tpu` extra), into
# a virtual environment on a uv-managed Python >= 3.11 (the TPU VM images ship Python 3.10).
#   launch/tpu_install.sh --tpu=tarflow [--dry-run]
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
REPO_DIR="$(cd "$(dirname "$0")/.." && pwd)"
run gcloud compute tpus tpu-vm scp --recurse "$REPO_DIR" "$TPU":~/tarflow_flax \
  --project="$PROJECT" --zone="$ZONE" --worker=all
UV="\$HOME/.local/bin/uv"
on_all_workers "python3 -m pip install --user -q uv==$UV_VERSION \
&& $UV python install $PYTHON_VERSION \
&& $UV venv --allow-existing --python $PYTHON_VERSION $VENV \
&& cd ~/tarflow_flax && $UV pip install -q --python $VENV/bin/python -e '.[tpu]' \
&& $VENV/bin/python --version"
