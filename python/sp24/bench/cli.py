"""sp24 benchmarks: sparsify kernels, 2:4 GEMM, FFN, the FP8 path, MoE experts, crossover, compiled binaries, report."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from . import binaries, common, cpu_ffn, crossover, ffn, fp8, gemm, moe, report, sparsify, summary


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sp24.bench", description=__doc__ + " Each measuring "
                                "sub-command writes <out>/<cmd>.json, <cmd>.md and plots; see bench/results/README.md.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in (sparsify, gemm, ffn, fp8, moe, cpu_ffn, crossover, binaries, report, summary):
        mod.add_parser(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    if not getattr(args, "no_resolve", False):
        args = common.resolve(args)
    args.func(args)
    return 0
