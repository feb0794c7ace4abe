"""Training entry point: `python -m tarflow_flax.main --config=configs/X.py[:preset] --workdir=DIR`.

Run the same command on every host of a TPU slice (the processes find each other there; elsewhere
add --coordinator_address/--num_processes/--process_id). DIR may be local or gs://. Rerunning the
command resumes from the latest checkpoint. Exit status: 0 finished, 1 an error (one line),
75 stopped early by SIGTERM / SIGINT / a preemption notice after saving a checkpoint.
"""

import jax
from absl import flags

from tarflow_flax import job_flags, runtime, train

_CONFIG = job_flags.define_config("Config file (configs/*.py[:preset]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard events, config (local "
                               "or gs://).")
flags.mark_flags_as_required(["config", "workdir"])
flags.adopt_module_key_flags(job_flags)  # --help lists --config too.


def main() -> None:
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if jax.process_index() == 0:
    print(train.done_message(_CONFIG.value, _WORKDIR.value), flush=True)


if __name__ == "__main__":
  runtime.run(main)
