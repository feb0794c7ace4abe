"""Samplers: exact sequential inverse (TarFlow.reverse), score-based denoising."""

from tarflow_flax.sampling.denoise import denoise

__all__ = ["denoise"]
