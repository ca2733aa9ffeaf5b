"""`python -m sp24.bench cpu-ffn`: the CPU cost of the 2:4 FFN, side by side with the dense one.

`sp24.relu2_ffn(sparse=True)` against `sparse=False` (the plain PyTorch FFN), forward + backward
(torch.autograd.grad of x, w1, w2), fp32 by default, on the CPU. The two are run interleaved (dense,
sparse, sparse, dense, ...) so that a machine whose load changes during the run slows both alike;
the result per shape is the ratio of the medians and the median of the per-pair ratios, with the
load average before and after (`os.getloadavg`, 1 minute), since a loaded machine inflates and
spreads both. The GEMMs cost the same in both modes on a CPU, so the ratio is the price of sp24's
own passes (sparsify, transposed split, decompression, permutation).

Targets (the README's status table; 2 cores, fp32): <= 1.25x at (T, d, F) = (4096, 512, 2048), <= 1.5x at the
demo's (1024, 128, 512). Writes <out>/cpu_ffn.json and <out>/cpu_ffn.md (default out/bench, which
git ignores) and prints the table. With --moe E:k it measures sp24.relu2_experts (sparse vs dense,
the dense being Hugging Face's eager experts loop op for op) instead, into <out>/cpu_moe.json / .md;
target <= 1.3x at the MoE study's layer (--shapes 4096:256:256 --moe 8:2).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time
from pathlib import Path

import torch

COMMAND = "cpu-ffn"
DEFAULT_SHAPES = "4096:512:2048,1024:128:512"
TARGETS = {(4096, 512, 2048): 1.25, (1024, 128, 512): 1.5}
MOE_TARGETS = {(4096, 256, 256, 8, 2): 1.3}  # the MoE study's layer: 2:4 experts <= 1.3x the dense experts
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def add_parser(sub) -> None:
    p = sub.add_parser(COMMAND, help="CPU: relu2_ffn fwd+bwd, 2:4 vs dense, interleaved, the ratio",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help=f"T:d:F[,T:d:F...] (default {DEFAULT_SHAPES})")
    p.add_argument("--reps", type=int, default=15, help="timed (dense, sparse) pairs per shape (default 15)")
    p.add_argument("--warmup", type=int, default=3, help="untimed pairs first (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--out", type=Path, default=Path("out") / "bench", help="output folder (default out/bench)")
    p.add_argument("--moe", default=None, metavar="E:k",
                   help="measure routed experts instead: sp24.relu2_experts with E experts of width F, top-k of a "
                        "fixed random routing, T tokens (e.g. --shapes 4096:256:256 --moe 8:2, the MoE study's layer)")
    p.set_defaults(func=run, no_resolve=True)


def parse_shapes(s: str) -> list[tuple[int, int, int]]:
    out = []
    for item in s.split(","):
        parts = item.split(":")
        try:
            T, d, F = (int(v) for v in parts)
        except ValueError:
            raise SystemExit(f"sp24.bench cpu-ffn: --shapes items must be T:d:F integers, got {item!r}") from None
        if T <= 0 or d % 8 or F % 8 or d <= 0 or F <= 0:
            raise SystemExit(f"sp24.bench cpu-ffn: need T > 0 and d, F positive multiples of 8, got {item!r}")
        out.append((T, d, F))
    return out


def measure(T: int, d: int, F: int, dtype: torch.dtype, reps: int, warmup: int, moe=None) -> dict:
    """Interleaved timings (ms) of one fwd+bwd of relu2_ffn (moe=(E, k): relu2_experts), dense and
    sparse, on fixed inputs."""
    import sp24

    g = torch.Generator().manual_seed(T + d + F)
    lead = () if moe is None else (moe[0],)
    x = torch.randn(T, d, generator=g).to(dtype).requires_grad_()
    w1 = (torch.randn(*lead, F, d, generator=g) * d ** -0.5).to(dtype).requires_grad_()
    w2 = (torch.randn(*lead, d, F, generator=g) * F ** -0.5).to(dtype).requires_grad_()
    gy = torch.randn(T, d, generator=g).to(dtype)
    if moe is not None:
        wts, idx = torch.randn(T, moe[0], generator=g).softmax(-1).topk(moe[1], dim=-1)

    def step(sparse: bool) -> float:
        t0 = time.perf_counter()
        if moe is None:
            out = sp24.relu2_ffn(x, w1, w2, sparse=sparse)
        else:
            out = sp24.relu2_experts(x, idx, wts, w1, w2, sparse=sparse)
        torch.autograd.grad(out, (x, w1, w2), gy)
        return (time.perf_counter() - t0) * 1e3

    times = {False: [], True: []}
    for i in range(warmup + reps):
        order = (False, True) if i % 2 == 0 else (True, False)
        got = {s: step(s) for s in order}
        if i >= warmup:
            for s in order:
                times[s].append(got[s])
    dense, sparse = statistics.median(times[False]), statistics.median(times[True])
    pair = statistics.median(s / d_ for d_, s in zip(times[False], times[True]))
    row = {"T": T, "d": d, "F": F, "dense_ms": dense, "sparse_ms": sparse, "ratio": sparse / dense,
           "ratio_of_pairs": pair, "dense_runs_ms": times[False], "sparse_runs_ms": times[True],
           "target": TARGETS.get((T, d, F)) if moe is None else MOE_TARGETS.get((T, d, F, *moe))}
    if moe is not None:
        row["E"], row["k"] = moe
    return row


def render(doc: dict) -> str:
    what = "relu2_ffn" if not doc.get("moe") else f"relu2_experts (E={doc['moe'][0]}, top-{doc['moe'][1]})"
    lines = [f"{what} fwd+bwd on {doc['device']}, {doc['dtype']}, {doc['threads']} threads, "
             f"median of {doc['reps']} interleaved pairs after {doc['warmup']}; load average (1 min) "
             f"{doc['load_before']:.2f} before, {doc['load_after']:.2f} after", "",
             "| T, d, F | dense (ms) | 2:4 (ms) | ratio | median pair ratio | target |", "|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        tgt = "" if r["target"] is None else f"<= {r['target']}x ({'met' if r['ratio'] <= r['target'] else 'NOT met'})"
        lines.append(f"| {r['T']}, {r['d']}, {r['F']} | {r['dense_ms']:.1f} | {r['sparse_ms']:.1f} | "
                     f"{r['ratio']:.2f}x | {r['ratio_of_pairs']:.2f}x | {tgt} |")
    return "\n".join(lines) + "\n"


def run(args) -> dict:
    if args.reps < 1 or args.warmup < 0:
        raise SystemExit(f"sp24.bench cpu-ffn: need --reps >= 1 and --warmup >= 0, got {args.reps} and {args.warmup}")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"sp24.bench cpu-ffn: --threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    from sp24.ffn import fallback

    shapes = parse_shapes(args.shapes)
    load_before = os.getloadavg()[0]
    moe = None
    if args.moe:
        try:
            moe = tuple(int(v) for v in args.moe.split(":"))
            assert len(moe) == 2 and 1 <= moe[1] <= moe[0]
        except (ValueError, AssertionError):
            raise SystemExit(f"sp24.bench cpu-ffn: --moe must be E:k with 1 <= k <= E, got {args.moe!r}") from None
    with fallback(False):
        rows = [measure(T, d, F, DTYPES[args.dtype], args.reps, args.warmup, moe) for T, d, F in shapes]
    from .common import git_commit

    doc = {"command": COMMAND, "device": f"cpu ({os.cpu_count()} cores)", "threads": torch.get_num_threads(),
           "dtype": args.dtype, "reps": args.reps, "warmup": args.warmup, "torch": torch.__version__,
           "git_commit": git_commit(), "load_before": load_before, "load_after": os.getloadavg()[0],
           "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "rows": rows,
           "moe": list(moe) if moe else None}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "cpu_moe" if moe else "cpu_ffn"
    (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
    text = render(doc)
    (args.out / f"{stem}.md").write_text(text)
    print(text, end="")
    print(f"sp24.bench cpu-ffn: wrote {args.out / (stem + '.json')} and {args.out / (stem + '.md')}")
    return doc
