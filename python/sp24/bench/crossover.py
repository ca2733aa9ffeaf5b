"""`python -m sp24.bench crossover`: per (d, F, dtype), the smallest token count T from which the
sp24 FFN (fallback off) is faster than the best dense FFN, forward and forward+backward. Writes the
table the FFN's automatic dense fallback reads (sp24/_fallback.py):

    {"schema": 1, "gpu": str, "torch": str, "measured_by": str,
     "entries": [{"d": int, "F": int, "dtype": "bfloat16" | "float16",
                  "min_tokens_fwd": int, "min_tokens_fwd_bwd": int}]}

to python/sp24/data/crossover.json when run on a GPU (and a copy to OUT/data/), to OUT/data/ only
with --tiny; --data-file overrides. min_tokens_* is the smallest swept T at which sparse wins at
that T and at every larger swept T; NEVER (2**31 - 1) when it never wins. The sweep of a
(d, F, dtype) stops early once both modes have won at two consecutive T.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import common, ffn, gemm

COMMAND = "crossover"
NEVER = 2 ** 31 - 1
TOKENS = gemm.TOKENS  # 128 ... 65536
TINY_TOKENS = [8, 16, 32]


def add_parser(sub) -> None:
    p = sub.add_parser(COMMAND, help="smallest T where sparse beats dense -> sp24/data/crossover.json",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(p)
    ffn.add_ffn_args(p, shapes_default="the gemm shapes", tokens_default="128,256,...,65536")
    p.add_argument("--dtypes", default="bfloat16,float16", help="comma-separated, bfloat16 and/or float16")
    p.add_argument("--data-file", type=Path, default=None, help="where to write the fallback table")
    # A full sweep is up to ~360 measurements (3 shapes x 2 dtypes x 10 T x 3 impls x 2 modes):
    # fewer runs each than the other commands keep it to minutes.
    p.set_defaults(func=run, default_reps=20, default_warmup=5)


def min_tokens(points: list[tuple[int, float]]) -> int:
    """Smallest T such that speed-up > 1 at T and at every larger T in `points` ((T, speedup)); NEVER
    if the largest T does not win. A missing speed-up (None) counts as a loss."""
    best = NEVER
    for T, s in sorted(points, reverse=True):
        if s is None or s <= 1.0:
            break
        best = T
    return best


def default_data_file(args) -> Path | None:
    if args.data_file is not None:
        return args.data_file
    if args.tiny:
        return args.out / "data" / "crossover.json"
    if args.device.type == "cuda":
        from sp24 import _fallback

        return _fallback.DATA_FILE
    return None  # a CPU run says nothing about where 2:4 pays on a GPU


def run(args) -> dict:
    dtypes = [s.strip() for s in args.dtypes.split(",") if s.strip()]
    for s in dtypes:
        if s not in ("bfloat16", "float16"):
            raise SystemExit(f"sp24.bench crossover: --dtypes entries must be bfloat16 or float16 (the fallback "
                             f"table's dtypes), got {s!r}")
    shapes, tokens = common.shapes_and_tokens(args, gemm.SHAPES, TOKENS, gemm.TINY_SHAPES, TINY_TOKENS, ffn.RULE)
    tokens = sorted(tokens)
    impls = ffn.load_impls()
    dense_c = ffn.dense_compiled_fn(args, impls)
    rows, entries, series = [], [], {}
    for label, d, F in common.progress(shapes, args, "crossover shapes"):
        for dtname in dtypes:
            pts = {m: [] for m in ffn.MODES}
            streak = {m: 0 for m in ffn.MODES}
            for T in tokens:
                case = ffn.measure_case(args, impls, dense_c, d, F, T, common.DTYPES[dtname], label)
                rows += case
                for r in case:
                    if r["name"] == "sparse":
                        s = r.get("speedup") if r["status"] == "ok" else None
                        pts[r["mode"]].append((T, s))
                        streak[r["mode"]] = streak[r["mode"]] + 1 if s is not None and s > 1.0 else 0
                if all(v >= 2 for v in streak.values()):
                    break
            if impls["sparse"] is None:
                continue
            for m in ffn.MODES:
                series[f"{m} {label} {dtname}"] = pts[m]
            entries.append({"d": d, "F": F, "dtype": dtname, "min_tokens_fwd": min_tokens(pts["fwd"]),
                            "min_tokens_fwd_bwd": min_tokens(pts["fwd_bwd"])})

    import sp24

    meta = common.metadata(args)
    table = {"schema": 1, "gpu": meta["gpu"], "torch": meta["torch"],
             "measured_by": f"python -m sp24.bench crossover (sp24 {sp24.__version__}, commit {meta['git_commit']}, "
                            f"{'tiny CPU shapes, not for use' if args.tiny else 'reps ' + str(args.reps)})",
             "entries": entries}
    written = []
    target = default_data_file(args)
    if target is not None and entries:
        for path in dict.fromkeys([target, args.out / "data" / "crossover.json"]):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(table, indent=1) + "\n")
            written.append(str(path))
    plot = common.speedup_plot(series, f"sp24 FFN crossover, {common.gpu_name(args.device)}")
    doc = common.result_doc(COMMAND, args, rows, crossover=table, data_files=written)
    return common.write_outputs(args, COMMAND, doc, plots=[("crossover_speedup.png", plot)])
