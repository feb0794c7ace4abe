"""tarflow_flax: TarFlow normalizing flows in JAX + Flax NNX (see README.md)."""

# Both settings must be made before JAX reads them: here, before any job module imports jax.
from tarflow_flax import platforms, xla_cpu

platforms.apply()
xla_cpu.apply()

__version__ = "0.1.0"
