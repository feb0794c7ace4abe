"""Classifier-free guidance settings → the per-step weights every sampler uses.

Guidance runs an unconditional pass (mean class embedding, null AdaLN embedding, attention
temperature attn_temp) batched with the conditional one and pushes the log-scales a and/or shifts
b (`guide_what`) away from it: a ← a_c + w·(a_c − a_u) (`flow_block.apply_guidance`).
"""

from __future__ import annotations

import numpy as np

from tarflow_flax import config_lib


def weights(num_tokens: int, guidance: float, guide_what: str,
            annealed: bool) -> np.ndarray | None:
  """The guidance weight of each token update, (T-1,) float32, or None without guidance.

  annealed: (i+1)/(T-1)·guidance (in float64 first, as the reference computes it in Python before
  the float32 multiply). Raises ValueError for a guide_what other than config_lib.GUIDE_WHAT.
  """
  if guide_what not in config_lib.GUIDE_WHAT:
    raise ValueError(f"guide_what must be one of {', '.join(map(repr, config_lib.GUIDE_WHAT))}; "
                     f"got {guide_what!r}")
  if not (guidance > 0 and guide_what):
    return None
  steps = np.arange(num_tokens - 1, dtype=np.float64)
  per_step = (steps + 1) / (num_tokens - 1) * guidance if annealed else np.full_like(steps,
                                                                                    guidance)
  return per_step.astype(np.float32)
