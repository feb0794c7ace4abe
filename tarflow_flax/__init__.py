"""tarflow_flax: TarFlow normalizing flows in JAX + Flax NNX (see README.md)."""

from tarflow_flax import xla_cpu

xla_cpu.apply()

__version__ = "0.1.0"
