"""Sampler benchmark: sequential vs Jacobi vs GS-Jacobi vs auto, same latents, same model.

  python benchmarks/sampling.py --config=configs/tiny.py --batch=16 \
      --config.image_size=32 --config.model.patch_size=2 --config.model.channels=256 \
      --config.model.num_blocks=4 --config.model.layers_per_block=4 [--checkpoint=DIR]

Random weights (proj_out scaled by --weight_scale so blocks are far from the identity) unless
--checkpoint is given.
Reports wall time per image (after one compile run), sweeps per block and max |Δ| to the
sequential result, as a table and one JSON line; speed-ups are ratios to sequential in this run.
"""

import time

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

import common  # benchmarks/common.py (the script's own folder is on sys.path)
from tarflow_flax import checkpoint, models, sampling

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Model config.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Use trained weights from here.")
_BATCH = flags.DEFINE_integer("batch", 16, "Images per sampling call.")
_TOL = flags.DEFINE_float("tol", 1e-5, "Tolerance of the parallel samplers.")
_GUIDANCE = flags.DEFINE_float("guidance", 0.0, "Classifier-free guidance weight.")
_ATTN_TEMP = flags.DEFINE_float("attn_temp", 1.0, "Temperature of the unconditional pass.")
_SEGMENTS = flags.DEFINE_integer("num_segments", 8, "GS-Jacobi segments per block.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed runs per method (median).")
_JSON = flags.DEFINE_string("json", None, "Also write the JSON result here.")
_SCALE = flags.DEFINE_float("weight_scale", 0.1, "Random proj_out scale (no --checkpoint); large "
                            "values make the inverse expand, and sampling chaotic.")
_EXTRA_SEGMENTS = flags.DEFINE_list("extra_segments", [], "More GS-Jacobi segment counts to run "
                                     "(e.g. 2,4,16): how sweeps grow with segment length.")
_CANDIDATES = flags.DEFINE_list("auto_candidates", None, "auto's candidate segment counts "
                                "(-1: sequential); default: strategy.DEFAULT_CANDIDATES.")


def random_model(config):
  model = models.build_model(config)
  for i, block in enumerate(model.blocks):
    kernel = block.proj_out.kernel
    key = jax.random.fold_in(jax.random.key(config.seed), i)
    kernel[...] = _SCALE.value * jax.random.normal(key, kernel.shape) / kernel.shape[0]**0.5
  return model


def main(argv):
  del argv
  config = _CONFIG.value
  model = (checkpoint.load_model(_CHECKPOINT.value, config).model if _CHECKPOINT.value
           else random_model(config))
  noise = jax.random.normal(jax.random.key(1), (_BATCH.value, model.num_tokens, model.token_dim))
  y = (jnp.arange(_BATCH.value) % config.model.num_classes) if config.model.num_classes else None
  kwargs = dict(guidance=_GUIDANCE.value, attn_temp=_ATTN_TEMP.value)
  runs = [("sequential", {}), ("jacobi", {}), ("gs_jacobi", {"num_segments": _SEGMENTS.value}),
          *[("gs_jacobi", {"num_segments": int(s)}) for s in _EXTRA_SEGMENTS.value],
          ("auto", {"candidate_segments": tuple(int(c) for c in _CANDIDATES.value)}
           if _CANDIDATES.value else {})]
  rows, reference = [], None
  for method, options in runs:
    start = time.perf_counter()
    images, info = sampling.sample(model, noise, y, method=method, tol=_TOL.value, **kwargs,
                                   **options)
    first = time.perf_counter() - start
    if method == "auto":  # Reuse the calibrated plans: time the sampler, not the calibration.
      options = {"plans": info["plans"]}
      method_run, tol = "gs_jacobi", info["calibration"]["tol"]
    else:
      method_run, tol = method, _TOL.value
    times = []
    for _ in range(_REPEATS.value):
      start = time.perf_counter()
      images, _ = sampling.sample(model, noise, y, method=method_run, tol=tol, **kwargs,
                                  **options)
      times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    if reference is None:
      reference = images
    rows.append({
        "method": method, "first_call_s": first, "s_per_image": seconds / _BATCH.value,
        # Segments per block of a uniform plan (sampler_cost.py reads these rows' sweeps).
        "segments": {"jacobi": 1, "gs_jacobi": options.get("num_segments")}.get(method),
        "auto_segments_per_block": ([b["segments"] for b in info["calibration"]["blocks"]]
                                    if method == "auto" else None),
        "iterations_per_block": info.get("iterations", [model.num_tokens - 1] * len(model.blocks)),
        "max_abs_diff_to_sequential": float(jnp.max(jnp.abs(images - reference))),
        "max_rel_diff_to_sequential": float(jnp.max(jnp.abs(images - reference)) /
                                            jnp.max(jnp.abs(reference))),
    })
  base = rows[0]["s_per_image"]
  print(f"{'method':<11} {'s/image':>9} {'speed-up':>9} {'max|Δ|':>9} {'rel':>9}  "
        "sweeps per block")
  for row in rows:
    row["speedup"] = base / row["s_per_image"]
    name = f"gs_jacobi/{row['segments']}" if row["method"] == "gs_jacobi" else row["method"]
    print(f"{name:<11} {row['s_per_image']:9.4f} {row['speedup']:9.2f} "
          f"{row['max_abs_diff_to_sequential']:9.2e} {row['max_rel_diff_to_sequential']:9.2e}  "
          f"{row['iterations_per_block']}")
  result = {"device": jax.devices()[0].device_kind, "batch": _BATCH.value, "tokens":
            model.num_tokens, "guidance": _GUIDANCE.value, "tol": _TOL.value,
            "weight_scale": None if _CHECKPOINT.value else _SCALE.value, "rows": rows}
  common.emit_json(result, _JSON.value)


if __name__ == "__main__":
  app.run(main)
