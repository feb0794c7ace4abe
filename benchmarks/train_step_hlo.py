"""The train step's optimized HLO on this host, instruction kinds counted: a refactor's check.

  python benchmarks/train_step_hlo.py --config=configs/tiny.py [--config.key=value ...] \
      [--devices=2] [--json=F] [--hlo=F]

Run at two commits with the same flags and compare: the same counts kind by kind (and the same
text, up to instruction numbering and source metadata, with --hlo) mean the change left the
compiled step alone, a stronger statement than timings on a shared CPU. Prints one line per kind
and one JSON line.
"""

import collections
import os
import re
import sys

_DEVICES = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--devices=")), "2")
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={_DEVICES}")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags  # pylint: disable=wrong-import-position
from ml_collections import config_flags  # pylint: disable=wrong-import-position

import common  # pylint: disable=wrong-import-position
from tarflow_flax import compile_check, config_lib, sharding, steps  # pylint: disable=wrong-import-position

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Model config.")
flags.DEFINE_string("devices", _DEVICES, "CPU devices to compile for (read before JAX starts).")
_JSON = flags.DEFINE_string("json", None, "Also write the JSON result to this file.")
_HLO = flags.DEFINE_string("hlo", None, "Write the HLO text, metadata stripped, to this file.")


def compiled_step_text(config) -> str:
  """The trainer's compiled step (same shardings and donation) for the config's global batch."""
  config_lib.validate(config)
  mesh = sharding.make_mesh(config.mesh)
  trainer, abstract = steps.make_trainer(config)
  shardings = steps.state_shardings(trainer, abstract, mesh)
  state = jax.eval_shape(trainer.init_state, abstract)
  step = steps.compile_train_step(trainer, shardings, mesh)
  text = step.lower(state, steps.batch_shapes(config, config.batch_size)).compile().as_text()
  return re.sub(r", metadata=\{[^}]*\}", "", text)


def instruction_kinds(hlo_text: str) -> dict[str, int]:
  """{op kind: count} over every instruction of every computation."""
  return dict(sorted(collections.Counter(compile_check.hlo_ops(hlo_text)).items()))


def main(argv):
  del argv
  text = compiled_step_text(_CONFIG.value)
  if _HLO.value:
    with open(_HLO.value, "w") as f:
      f.write(text)
  kinds = instruction_kinds(text)
  for kind, count in kinds.items():
    print(f"{kind:28s}{count:8d}")
  common.emit_json({"instructions": sum(kinds.values()), "kinds": kinds,
                    "devices": jax.device_count()}, _JSON.value)


if __name__ == "__main__":
  app.run(main)
