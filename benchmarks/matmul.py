"""Float32 matmul throughput on this machine: the ceiling for the train-step comparison.

  python benchmarks/matmul.py [--rows=8,16,64,4096]

Times (rows × 256)·(256 × 1024) inside a jitted loop (so no dispatch per call), with XLA's own
dot emitter (what tarflow_flax sets on the CPU) and with YNNPACK dot fusions, and prints GFLOP/s.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import tarflow_flax  # pylint: disable=unused-import  (its XLA CPU flag; both variants below)

_ROWS = flags.DEFINE_list("rows", ["8", "16", "64", "4096"], "Rows of the left operand.")
VARIANTS = {"xla_dot": {"xla_cpu_experimental_ynn_fusion_type": ""},
            "ynnpack": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}}


def gflops(rows: int, options: dict, k: int = 256, n: int = 1024) -> float:
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((rows, k)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((k, n)), jnp.float32)
  iters = max(20, 20000 // rows)

  def loop(x, w):
    body = lambda i, acc: acc + 1e-6 * jnp.dot(acc, w, precision="highest")[:, :k]
    return jax.lax.fori_loop(0, iters, body, x)

  run = jax.jit(loop, compiler_options=options).lower(x, w).compile()
  jax.block_until_ready(run(x, w))
  start = time.perf_counter()
  jax.block_until_ready(run(x, w))
  return 2 * rows * k * n * iters / (time.perf_counter() - start) / 1e9


def main(argv):
  del argv
  for rows in map(int, _ROWS.value):
    cells = [f"{name} {gflops(rows, options):.1f} GFLOP/s" for name, options in VARIANTS.items()]
    print(f"({rows}x256)·(256x1024): " + ", ".join(cells), flush=True)


if __name__ == "__main__":
  app.run(main)
