"""Automatic per-block sampling plans from a short calibration (method='auto').

On the first `calibration_size` latents of the batch:
 1. the exact sequential inverse gives every block's true input and output;
 2. each block starts from its input latent or from zeros, whichever is closer to its exact
    output (near-identity blocks: the latent); then for each candidate segmentation (1 segment =
    Jacobi, …, T−1 one-token segments = the sequential sampler), GS-Jacobi from the block's true
    input counts
    the sweeps each segment needs to reach `tol` and is timed on this device (after compiling;
    the fastest of `repeats` runs); a candidate whose sweeps reach a segment's length is rejected
    (saturated: no better than sequential there); the fastest remaining candidate wins, so the
    choice follows the hardware (parallel sweeps pay off on accelerators, rarely on a CPU), and
    each segment's budget is set to 1.25× its measured sweeps + 1 (never more than the segment
    length, which is always exact);
 3. the whole plan is run end to end and compared with the sequential result.

The bound kept: on the calibration batch, max|x_auto − x_seq| / max|x_seq| ≤ `max_deviation`
(default 1e-3). If the plan misses it, budgets are lifted to the segment lengths and `tol` is
tightened 10× (twice), and the last resort is tol = 0 (exact up to float rounding).
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tarflow_flax.sampling import guidance as guidance_lib
from tarflow_flax.sampling import jacobi, sequential

DEFAULT_CANDIDATES = (1, 4, 16, -1)  # -1: one segment per token (sequential).


@functools.partial(nnx.jit, static_argnames=("plan", "guide_what"))
def _invert_one(block, z, y, weights, attn_temp, tol, y_cont, *, plan, guide_what):
  return jacobi.invert_block(block, z, y, plan, tol=tol, guidance_weights=weights,
                             guide_what=guide_what, attn_temp=attn_temp, y_cont=y_cont)


def _relative(a, b) -> float:
  return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30))


def _closer_guess(block_in, block_out) -> str:
  """'latent' if the block's input is closer to its exact output than zeros are (max norm)."""
  return ("latent" if float(jnp.max(jnp.abs(block_in - block_out)))
          <= float(jnp.max(jnp.abs(block_out))) else "zeros")


def calibrate(model, noise_tokens, y=None, *, tol: float, guidance: float = 0.0,
              guide_what: str = "ab", attn_temp: float = 1.0, annealed_guidance: bool = False,
              max_deviation: float = 1e-3, calibration_size: int = 4,
              candidate_segments=DEFAULT_CANDIDATES, init: str | None = None,
              repeats: int = 3, reject_saturated: bool = True, y_cont=None):
  """→ (plans per block in sampling order, report).

  The report is JSON-serialisable: 'tol' (the tolerance to sample with), 'plans'
  (`plans_to_json`), per-block choices and rejected candidates; `sampling.sample(...,
  method='auto', calibration=report)` reuses it without calibrating again.
  init: the initial guess of every block ('latent' | 'zeros'); None picks per block the one
  closer to the block's exact output on the calibration batch. repeats: timed runs per candidate
  (the fastest counts). reject_saturated: drop candidates whose sweeps reach a segment's length
  (False keeps them, e.g. to study parallel plans only).
  """
  n = min(calibration_size, noise_tokens.shape[0])
  noise = jnp.asarray(noise_tokens[:n], jnp.float32)
  y_cal = None if y is None else jnp.asarray(y)[:n]
  c_cal = None if y_cont is None else jnp.asarray(y_cont)[:n]
  t = model.num_tokens
  weights = guidance_lib.weights(t, guidance, guide_what, annealed_guidance)
  kwargs = dict(guidance=guidance, guide_what=guide_what, attn_temp=attn_temp,
                annealed_guidance=annealed_guidance)
  exact, sequence = sequential.reverse(model, noise, y_cal, return_sequence=True, y_cont=c_cal,
                                       **kwargs)
  # sequence[0] is the unscaled noise; block inputs in sampling order are √var·noise, then
  # the outputs of the previous blocks.
  inputs = [noise * jnp.sqrt(model.var[...])] + [model.patchify(s) for s in sequence[1:-1]]
  outputs = [model.patchify(s) for s in sequence[1:]]
  plans, chosen = [], []
  for block, block_in, block_out in zip(reversed(model.blocks), inputs, outputs):
    block_init = init or _closer_guess(block_in, block_out)
    args = (block, block_in, y_cal, weights, jnp.float32(attn_temp), jnp.float32(tol), c_cal)
    timed, rejected = [], []
    for segments in candidate_segments:
      plan = jacobi.BlockPlan.uniform(t, t - 1 if segments == -1 else segments,
                                      init=block_init)
      seconds, counts = _best_time(functools.partial(_invert_one, *args, plan=plan,
                                                     guide_what=guide_what), repeats)
      lengths = np.diff(plan.boundaries)
      if reject_saturated and len(lengths) < t - 1 and np.any(counts >= lengths):
        # Saturated: a segment needed as many sweeps as it has tokens, which the sequential
        # inverse does with cheaper one-token steps; its timing on this batch is luck.
        rejected.append({"segments": len(lengths), "seconds": seconds,
                         "sweeps": counts.tolist(), "lengths": lengths.tolist()})
        continue
      timed.append((seconds, plan, counts))
    if not timed:  # Every candidate saturated: the sequential inverse is at least as good.
      plan = jacobi.BlockPlan.uniform(t, t - 1, init=block_init)
      seconds, counts = _best_time(functools.partial(_invert_one, *args, plan=plan,
                                                     guide_what=guide_what), repeats)
      timed.append((seconds, plan, counts))
    seconds, plan, counts = min(timed, key=lambda c: c[0])
    lengths = np.diff(plan.boundaries)
    budgets = tuple(int(min(l, math.ceil(1.25 * c) + 1)) for l, c in zip(lengths, counts))
    plans.append(jacobi.BlockPlan(plan.boundaries, budgets, block_init))
    chosen.append({"segments": len(lengths), "init": block_init,
                   "calibration_sweeps": int(counts.sum()), "calibration_seconds": seconds,
                   "budgets": list(budgets), "rejected_saturated": rejected})

  attempt_tol = tol
  for attempt in range(4):
    images, _ = jacobi.run_plans(model, noise, y_cal, plans, tol=attempt_tol, y_cont=c_cal, **kwargs)
    deviation = _relative(images, exact)
    if deviation <= max_deviation:
      break
    # Lift the budgets and tighten the tolerance; the last try is exact up to rounding.
    plans = [jacobi.BlockPlan(p.boundaries, None, p.init) for p in plans]
    attempt_tol = 0.0 if attempt == 2 else attempt_tol / 10
  report = {"blocks": chosen, "tol": float(attempt_tol), "calibration_deviation": deviation,
            "max_deviation": max_deviation, "calibration_size": n, "repeats": repeats,
            "plans": plans_to_json(plans)}
  return tuple(plans), report


def _best_time(run, repeats: int) -> tuple[float, np.ndarray]:
  """(fastest of `repeats` timed runs after a compiling one, sweeps per segment) of `run()`."""
  _, counts = jax.block_until_ready(run())  # Compile.
  times = []
  for _ in range(max(1, repeats)):
    start = time.perf_counter()
    jax.block_until_ready(run())
    times.append(time.perf_counter() - start)
  # The minimum: load from other work only ever adds time.
  return min(times), np.asarray(counts)


def plans_to_json(plans) -> list[dict]:
  """BlockPlans → a JSON-serialisable list (stored in sampling.json and reused on resume)."""
  return [{"boundaries": list(p.boundaries),
           "max_iters": None if p.max_iters is None else list(p.max_iters),
           "init": p.init, "clamp": p.clamp} for p in plans]


def plans_from_json(obj) -> tuple[jacobi.BlockPlan, ...]:
  """The inverse of `plans_to_json`."""
  return tuple(jacobi.BlockPlan(tuple(int(b) for b in p["boundaries"]),
                                None if p.get("max_iters") is None
                                else tuple(int(m) for m in p["max_iters"]),
                                p.get("init", "latent"), p.get("clamp")) for p in obj)


def summary(report: dict) -> str:
  """One line naming the plan `calibrate` chose, e.g. for the job's log."""
  blocks = ", ".join(f"{b['segments']}x{b['init']}(budget {sum(b['budgets'])})"
                     for b in report["blocks"])
  return (f"auto plan per block (sampling order): {blocks}; tol={report['tol']:g}, "
          f"calibration deviation {report['calibration_deviation']:.2e} "
          f"(bound {report['max_deviation']:g})")
