"""One entry point for every sampler: `sample(model, noise_tokens, y, method=...)`.

methods:
  sequential  the exact token-by-token inverse with a KV cache (TarFlow.reverse); ignores tol.
  jacobi      one segment per block, all tokens updated in parallel per sweep.
  gs_jacobi   `num_segments` segments per block (default 8), Gauss-Seidel across segments.
  auto        per-block plans from a short calibration (strategy.py) that keeps the deviation
              from the sequential sampler below `max_deviation` on the calibration batch.
"""

from __future__ import annotations

import time

import jax

from tarflow_flax.sampling import jacobi, strategy
from tarflow_flax.sampling.denoise import denoise
from tarflow_flax.sampling.jacobi import DEFAULT_TOL, run_plans

METHODS = ("sequential", "jacobi", "gs_jacobi", "auto")
DEFAULT_GS_SEGMENTS = 8


def plans_for(model, method: str, *, max_iters=None, num_segments=None, init="latent",
              clamp=None) -> tuple[jacobi.BlockPlan, ...]:
  """Uniform plans (one per block, sampling order) for 'jacobi' / 'gs_jacobi'."""
  segments = 1 if method == "jacobi" else (num_segments or DEFAULT_GS_SEGMENTS)
  plans = []
  for _ in model.blocks:
    plan = jacobi.BlockPlan.uniform(model.num_tokens, segments, init=init, clamp=clamp)
    if max_iters is not None:
      plan = jacobi.BlockPlan(plan.boundaries, (int(max_iters),) * (len(plan.boundaries) - 1),
                              init, clamp)
    plans.append(plan)
  return tuple(plans)


def sample(model, noise_tokens, y=None, *, method: str = "sequential", guidance: float = 0.0,
           guide_what: str = "ab", attn_temp: float = 1.0, annealed_guidance: bool = False,
           denoise_std: float | None = None, denoise_lr: float = 1.0, tol: float = DEFAULT_TOL,
           max_iters=None, y_cont=None, **method_options):
  """Samples NHWC images from latent tokens → (images, info).

  info: 'method', 'seconds', and for the parallel methods 'iterations' (total sweeps per block,
  sampling order), 'segment_iterations' (per segment) and 'plans'. method_options: 'num_segments',
  'init' ('latent' | 'zeros'), 'clamp' for jacobi/gs_jacobi; 'plans' to pass explicit BlockPlans
  (or their `strategy.plans_to_json` form); for auto, the options of `strategy.calibrate` (e.g.
  max_deviation, calibration_size, repeats), or 'calibration': a stored info['calibration'] (JSON)
  whose plans and tol are reused without calibrating again.
  denoise_std: apply the score-based denoising step with this noise level, scaled by denoise_lr
  (1: σ²·∇ log p; 0: no denoising).
  y_cont: (N, cond_dim) AdaLN conditions (None: the null embedding), guided like the labels.
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  model.check_tokens(noise_tokens)
  model.check_labels(y, noise_tokens.shape[0])
  model.check_cond(y_cont, noise_tokens.shape[0])
  if guide_what not in ("", "a", "b", "ab"):
    raise ValueError(f"guide_what must be one of '', 'a', 'b', 'ab'; got {guide_what!r}")
  guidance_kwargs = dict(guidance=guidance, guide_what=guide_what, attn_temp=attn_temp,
                         annealed_guidance=annealed_guidance)
  start = time.perf_counter()
  info = {"method": method}
  if method == "sequential":
    images = model.reverse(noise_tokens, y, y_cont=y_cont, **guidance_kwargs)
  else:
    plans = method_options.pop("plans", None)
    if plans and isinstance(plans[0], dict):  # Stored with strategy.plans_to_json.
      plans = strategy.plans_from_json(plans)
    calibration = method_options.pop("calibration", None)
    if plans is None and method == "auto" and calibration is not None:  # A stored calibration.
      plans, tol = strategy.plans_from_json(calibration["plans"]), calibration["tol"]
      info["calibration"] = calibration
    elif plans is None and method == "auto":
      plans, info["calibration"] = strategy.calibrate(model, noise_tokens, y, tol=tol,
                                                      y_cont=y_cont, **guidance_kwargs,
                                                      **method_options)
      tol = info["calibration"]["tol"]
    elif plans is None:
      plans = plans_for(model, method, max_iters=max_iters, **method_options)
    images, counts = run_plans(model, noise_tokens, y, plans, tol=tol, y_cont=y_cont,
                               **guidance_kwargs)
    info.update(plans=plans, segment_iterations=counts,
                iterations=[sum(c) for c in counts])
  if denoise_std and denoise_lr:
    images = denoise(model, images, y, denoise_std, lr=denoise_lr, y_cont=y_cont)
  images = jax.block_until_ready(images)
  info["seconds"] = time.perf_counter() - start
  return images, info
