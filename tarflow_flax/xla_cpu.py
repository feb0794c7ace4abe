"""XLA CPU tuning, applied when tarflow_flax is imported (before JAX starts its CPU backend).

jaxlib 0.10 hands float32 dots on the CPU to YNNPACK fusions. At this project's shapes XLA's own
dot emitter is as fast or faster: interleaved runs on the 2-core AVX2 host (benchmarks/README.md)
gave sequential sampling 1.07–1.22× the images/s without those fusions (the small per-token
matmuls), and loss + gradient 1.00–1.02× (the default config, and 32x32 width 256). So
`--xla_cpu_experimental_ynn_fusion_type=` (no fusion types) is appended to XLA_FLAGS unless the
user already sets that flag there. It only affects the CPU backend, and only if JAX has not
created that backend yet in this process (then nothing changes).
"""

import os

FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def apply() -> None:
  flags = os.environ.get("XLA_FLAGS", "")
  if FLAG not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {FLAG}=".strip()
