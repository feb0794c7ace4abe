"""Entry point: `python -m tarflow_flax.main --config=configs/X.py[:preset] --workdir=DIR`.

Run the same command on every host of a TPU slice (jax.distributed finds its peers there); on other
clusters pass --coordinator_address/--num_processes/--process_id. All logic is in train.py.
"""

import json
import sys

import jax
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from tarflow_flax import config_lib, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:preset]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard events, config.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (multi-host outside Cloud TPU).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", None,
                                 "Call jax.distributed.initialize (default: when any of the "
                                 "flags above is set, or on a multi-host Cloud TPU).")
flags.mark_flags_as_required(["config", "workdir"])


def _init_distributed() -> None:
  explicit = _COORDINATOR.value or _NUM_PROCESSES.value or _PROCESS_ID.value is not None
  if _DISTRIBUTED.value is False:
    return
  if explicit or _DISTRIBUTED.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
    return
  try:  # Cloud TPU pod slices: every worker discovers the others by itself.
    jax.distributed.initialize()
  except (RuntimeError, ValueError) as e:
    logging.info("Single-process run (jax.distributed not initialised: %s)", e)


def main(argv):
  del argv
  config = _CONFIG.value
  try:
    config_lib.validate(config)
  except config_lib.ConfigError as e:
    sys.exit(f"error: {e}")
  _init_distributed()
  logging.info("Process %d/%d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  workdir = epath.Path(_WORKDIR.value)
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(json.loads(config.to_json()), indent=2))
  try:
    train.train_and_evaluate(config, str(workdir))
  except (config_lib.ConfigError, train.NonFiniteLossError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
