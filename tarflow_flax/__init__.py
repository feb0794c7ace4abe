"""tarflow_flax: TarFlow normalizing flows in JAX + Flax NNX (see README.md)."""

__version__ = "0.1.0"
