"""One entry point for every sampler: `sample(model, noise_tokens, y, method=...)`.

methods (the table SAMPLERS; their names: config_lib.SAMPLE_METHODS):
  sequential  the exact token-by-token inverse with a KV cache (sequential.py); ignores tol.
  jacobi      one segment per block, all tokens updated in parallel per sweep.
  gs_jacobi   `num_segments` segments per block (default 8), Gauss-Seidel across segments.
  auto        per-block plans from a short calibration (strategy.py) that keeps the deviation
              from the sequential sampler below `max_deviation` on the calibration batch.
"""

from __future__ import annotations

import time

import jax

from tarflow_flax import config_lib
from tarflow_flax.sampling import jacobi, sequential, strategy
from tarflow_flax.sampling.denoise import denoise
from tarflow_flax.sampling.jacobi import DEFAULT_TOL, run_plans

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
  if method not in SAMPLERS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  model.check_tokens(noise_tokens)
  model.check_labels(y, noise_tokens.shape[0])
  model.check_cond(y_cont, noise_tokens.shape[0])
  guidance_kwargs = dict(guidance=guidance, guide_what=guide_what, attn_temp=attn_temp,
                         annealed_guidance=annealed_guidance)
  start = time.perf_counter()
  images, info = SAMPLERS[method](model, noise_tokens, y, y_cont=y_cont, method=method, tol=tol,
                                  max_iters=max_iters, guidance_kwargs=guidance_kwargs,
                                  method_options=method_options)
  if denoise_std and denoise_lr:
    images = denoise(model, images, y, denoise_std, lr=denoise_lr, y_cont=y_cont)
  images = jax.block_until_ready(images)
  return images, {"method": method, **info, "seconds": time.perf_counter() - start}


def _sequential(model, noise_tokens, y, *, y_cont, guidance_kwargs, **unused):
  del unused  # tol, max_iters and plans mean nothing to the exact inverse.
  return sequential.reverse(model, noise_tokens, y, y_cont=y_cont, **guidance_kwargs), {}


def _uniform_plans(model, noise_tokens, y, *, method, tol, max_iters, y_cont, guidance_kwargs,
                   method_options, calibration):
  del noise_tokens, y, y_cont, guidance_kwargs, calibration
  return plans_for(model, method, max_iters=max_iters, **method_options), tol, {}


def _calibrated_plans(model, noise_tokens, y, *, method, tol, max_iters, y_cont,
                      guidance_kwargs, method_options, calibration):
  """auto: the plans of a stored calibration, or of a new one on this batch."""
  del method, max_iters
  if calibration is not None:
    return strategy.plans_from_json(calibration["plans"]), calibration["tol"], {
        "calibration": calibration}
  plans, report = strategy.calibrate(model, noise_tokens, y, tol=tol, y_cont=y_cont,
                                     **guidance_kwargs, **method_options)
  return plans, report["tol"], {"calibration": report}


_PLANNERS = {"jacobi": _uniform_plans, "gs_jacobi": _uniform_plans, "auto": _calibrated_plans}


def _parallel(model, noise_tokens, y, *, method, tol, max_iters, y_cont, guidance_kwargs,
              method_options):
  """The Jacobi family: per-block plans (given, uniform or calibrated), then `run_plans`."""
  method_options = dict(method_options)
  plans = method_options.pop("plans", None)
  calibration = method_options.pop("calibration", None)
  info = {}
  if plans and isinstance(plans[0], dict):  # Stored with strategy.plans_to_json.
    plans = strategy.plans_from_json(plans)
  if plans is None:
    plans, tol, info = _PLANNERS[method](
        model, noise_tokens, y, method=method, tol=tol, max_iters=max_iters, y_cont=y_cont,
        guidance_kwargs=guidance_kwargs, method_options=method_options, calibration=calibration)
  images, counts = run_plans(model, noise_tokens, y, plans, tol=tol, y_cont=y_cont,
                             **guidance_kwargs)
  return images, {**info, "plans": plans, "segment_iterations": counts,
                  "iterations": [sum(c) for c in counts]}


# method → sampler(model, noise_tokens, y, **settings) → (images, info).
SAMPLERS = {"sequential": _sequential, "jacobi": _parallel, "gs_jacobi": _parallel,
            "auto": _parallel}
METHODS = tuple(SAMPLERS)
assert METHODS == config_lib.SAMPLE_METHODS, "the sampler table and the config's names differ"
