"""Prepare job: makes the config's dataset ready in config.data.data_dir, local or gs://.

  python -m tarflow_flax.prepare --config=configs/imagenet64.py:likelihood \
      --config.data.manual_dir=/archives --config.data.data_dir=gs://BUCKET/tfds [--staging_dir=DIR]

A local data_dir: the dataset is built there (what a job would otherwise do on first use).
A remote data_dir (gs://): the dataset is built in --staging_dir (a local folder; default TFDS's
data dir) and uploaded, `dataset_info.json` last, so the bucket never holds a dataset that looks
prepared but is not. Rerunning after an interruption reuses the local build and uploads only what
is missing; on a complete bucket it changes nothing. Then every split is opened from data_dir: one
line per split (examples, bytes) and a final `done:` line.

One process on any machine, CPU only (it never joins a slice's other workers): a CPU VM in the
bucket's region is the place for ImageNet. Exit status: 0 done, 1 an error (one line), 75 stopped
by SIGTERM / SIGINT: the same command continues.
"""

from __future__ import annotations

from absl import flags

from tarflow_flax import job_flags, prepare_lib, runtime


def _define_flags():
  """The CLI's flags → the job (the library function is prepare_lib.prepare_dataset)."""
  config = job_flags.define_config("Config file (configs/*.py[:preset]); its config.data says "
                                   "what to prepare and where.", lock_config=True)
  flags.adopt_module_key_flags(job_flags)  # --help lists the shared flags too.
  staging_dir = flags.DEFINE_string(
      "staging_dir", None, "Local folder in which a dataset for a gs:// data_dir is built before "
      "the upload (default: $TFDS_DATA_DIR or ~/tensorflow_datasets). Keep it until `done:`: a "
      "rerun uploads from it instead of building again.")
  flags.mark_flags_as_required(["config"])
  # Preparing is one process's work: never wait for (or start) a slice's other workers.
  flags.FLAGS.set_default("distributed", False)
  return lambda: prepare_lib.prepare_dataset(config.value.data, staging_dir.value)


if __name__ == "__main__":
  runtime.run(_define_flags())
