"""The command-line flags that several jobs share, each defined in one place.

absl flags live in one global registry, so a module that defines flags when imported cannot be
imported beside another that defines the same names. The jobs' modules therefore define none at
import: their CLIs call these functions (and define their own flags) under `__main__`, and other
code imports the jobs' functions freely.
"""

from __future__ import annotations

import dataclasses
import importlib.machinery
import importlib.util
import sys
import types

from absl import flags
from ml_collections import config_flags

from tarflow_flax.fid import protocols as fid_protocols
from tarflow_flax.sampling import api as sampling_api


def _load_config_file(module_name: str, module_path: str) -> types.ModuleType:
  """A config file as a module, as ml_collections loads it but through `exec_module`: its own
  loader (1.1.0, the newest) calls the deprecated `load_module()`, a DeprecationWarning per
  parse. Same result: the module, also registered in sys.modules under `module_name`."""
  loader = importlib.machinery.SourceFileLoader(module_name, module_path)
  spec = importlib.util.spec_from_loader(module_name, loader)
  module = importlib.util.module_from_spec(spec)
  sys.modules[module_name] = module
  loader.exec_module(module)
  return module


# The module that loads config files (the package re-exports only its public names).
_CONFIG_FILE_LOADER = importlib.import_module("ml_collections.config_flags.config_flags")
_CONFIG_FILE_LOADER._load_source = _load_config_file  # pylint: disable=protected-access


def define_config(help_text: str = "Config (default: the checkpoint's).", **kwargs):
  """--config=FILE[:preset] with --config.KEY=VALUE overrides."""
  return config_flags.DEFINE_config_file("config", None, help_text, **kwargs)


@dataclasses.dataclass(frozen=True)
class CheckpointFlags:
  """Which checkpoint a job reads: --workdir or --checkpoint, --step, --use_ema."""
  workdir: flags.FlagHolder
  checkpoint: flags.FlagHolder
  step: flags.FlagHolder
  use_ema: flags.FlagHolder

  def root(self):
    from tarflow_flax import runtime  # pylint: disable=g-import-not-at-top
    return runtime.checkpoint_root(self.workdir.value, self.checkpoint.value)


def define_checkpoint() -> CheckpointFlags:
  return CheckpointFlags(
      workdir=flags.DEFINE_string("workdir", None,
                                  "Training workdir (reads workdir/checkpoints)."),
      checkpoint=flags.DEFINE_string("checkpoint", None,
                                     "A checkpoint root (e.g. from convert)."),
      step=flags.DEFINE_integer("step", None, "Checkpoint step (default: latest)."),
      use_ema=flags.DEFINE_bool("use_ema", True, "Use the EMA weights when present."))


def define_seed(help_text: str):
  return flags.DEFINE_integer("seed", 0, help_text)


def define_fid_protocol():
  return flags.DEFINE_enum("fid_protocol", fid_protocols.DEFAULT_PROTOCOL,
                           list(fid_protocols.PROTOCOLS),
                           "reference: ml-tarflow's torchmetrics/torch-fidelity FID (comparable "
                           "with the paper); pytorch_fid: pytorch-fid's. For sampling: how the "
                           "float samples become the stored uint8 (the FID input).")


@dataclasses.dataclass(frozen=True)
class SamplerFlags:
  """The sampler's settings; those left unset fall back to config.sample.*."""
  method: flags.FlagHolder
  tol: flags.FlagHolder
  guidance: flags.FlagHolder
  attn_temp: flags.FlagHolder
  annealed_guidance: flags.FlagHolder
  denoise: flags.FlagHolder
  denoise_lr: flags.FlagHolder

  def values(self) -> dict:
    """{field: value} of every sampler flag, as keyword arguments of the jobs' options."""
    return {field.name: getattr(self, field.name).value for field in dataclasses.fields(self)}


def define_sampler() -> SamplerFlags:
  return SamplerFlags(
      method=flags.DEFINE_enum("method", None, list(sampling_api.METHODS),
                               "Sampler (default: config.sample.method)."),
      tol=flags.DEFINE_float("tol", sampling_api.DEFAULT_TOL, "Parallel samplers' tolerance."),
      guidance=flags.DEFINE_float("guidance", None, "Default: config.sample.guidance."),
      attn_temp=flags.DEFINE_float("attn_temp", None, "Default: config.sample.attn_temp."),
      annealed_guidance=flags.DEFINE_bool("annealed_guidance", None,
                                          "Default: config.sample.annealed_guidance."),
      denoise=flags.DEFINE_bool("denoise", None, "Score-based denoising (default: config)."),
      denoise_lr=flags.DEFINE_float("denoise_lr", None, "Denoising step as a multiple of "
                                    "σ²·∇log p, 0: off (default: config.sample.denoise_lr)."))
