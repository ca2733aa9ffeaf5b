"""sp24 benchmarks: `python -m sp24.bench {sparsify,gemm,ffn,crossover,binaries,report} --out DIR`.

Each sub-command writes <out>/<command>.json (schema: schema.json, checked by validate.py), a
markdown table <out>/<command>.md and PNG plots where relevant. Timing: timing.py (CUDA events,
warm-up, median/p10/p90, inputs rotated through >= 2x L2). See bench/results/README.md.
"""

from .cli import main

__all__ = ["main"]
