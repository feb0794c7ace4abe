"""Samplers: exact sequential inverse, Jacobi / GS-Jacobi / auto parallel inverses, denoising."""

from tarflow_flax.sampling import sequential
from tarflow_flax.sampling.api import METHODS, SAMPLERS, plans_for, run_plans, sample
from tarflow_flax.sampling.denoise import denoise
from tarflow_flax.sampling.jacobi import BlockPlan, invert_block

__all__ = ["METHODS", "SAMPLERS", "BlockPlan", "denoise", "invert_block", "plans_for", "run_plans",
           "sample", "sequential"]
