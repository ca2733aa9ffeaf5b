"""`python -m sp24.bench binaries`: run the compiled benchmark binaries (bench/*.cu, built with
SP24_BUILD_BENCH=ON) if they are found, and collect their JSON lines.

bench_gemm      cuSPARSELt (prune, compress, matmul) vs cuBLAS (cublasGemmEx), no torch in between
bench_sparsify  sp24's sparsify CUDA kernels standalone vs cudaMemcpy (the clone baseline)

Search order: $SP24_BENCH_BIN_DIR, <installed sp24>/bin (next to sp24._C), <checkout>/build/*/bench.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

from . import common

COMMAND = "binaries"
BINARIES = ("bench_gemm", "bench_sparsify")
_DT = {"bfloat16": "bf16", "float16": "fp16"}


def add_parser(sub) -> None:
    p = sub.add_parser(COMMAND, help="run the compiled cuSPARSELt/cuBLAS/sparsify binaries", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(p)
    p.add_argument("--bin-dir", type=Path, default=None, help="directory holding bench_gemm / bench_sparsify")
    # gpu_check.sh gives this step 180 s in all: a binary past its own limit keeps the lines it printed.
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per binary (default 120)")
    p.set_defaults(func=run)


def search_dirs(extra: Path | None = None) -> list[Path]:
    import sp24
    from sp24 import _C

    dirs = [extra] if extra else []
    if os.environ.get("SP24_BENCH_BIN_DIR"):
        dirs.append(Path(os.environ["SP24_BENCH_BIN_DIR"]))
    dirs += [Path(_C.__file__).resolve().parent / "bin", Path(sp24.__file__).resolve().parent / "bin"]
    checkout = Path(sp24.__file__).resolve().parents[2]
    dirs += sorted(checkout.glob("build/*/bench"), key=lambda p: p.stat().st_mtime, reverse=True)
    return dirs


def find_binary(name: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        p = d / name
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return None


def binary_args(name: str, args) -> list[str]:
    a = ["--reps", str(args.reps), "--warmup", str(args.warmup), "--dtype", _DT.get(args.dtype, "bf16")]
    if args.tiny:
        a += ["--tokens", "128,256", "--shapes", "256:512"] if name == "bench_gemm" else ["--shape", "256,512"]
    return a


def parse_lines(binary: str, text: str) -> list[dict]:
    """One row per JSON object line of a binary's stdout; other lines are ignored."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        ok = rec.get("status", "ok") == "ok" and rec.get("median_us") is not None
        row = {"name": str(rec.get("name", "?")), "binary": binary, "status": "ok" if ok else "error",
               "median_us": rec.get("median_us"), "p10_us": rec.get("p10_us"), "p90_us": rec.get("p90_us"),
               "record": rec}
        if not ok:
            row["reason"] = str(rec.get("reason", "the binary reported a failure"))
        rows.append(row)
    return rows


def run(args) -> dict:
    dtype = _DT.get(args.dtype)
    dirs = search_dirs(args.bin_dir)
    rows = []
    for name in BINARIES:
        path = find_binary(name, dirs)
        if path is None:
            rows.append(common.unavailable_row(name, "not built: rebuild with SP24_BUILD_BENCH=ON SP24_CUDA=ON pip "
                                               "install --no-build-isolation -e . (looked in "
                                               + ", ".join(map(str, dirs)) + ")", binary=name))
        elif args.device.type != "cuda":
            rows.append(common.unavailable_row(name, f"needs a CUDA device, got --device {args.device}", binary=str(path)))
        elif dtype is None:
            rows.append(common.unavailable_row(name, f"binaries time bfloat16/float16 only, got --dtype {args.dtype}",
                                               binary=str(path)))
        else:
            cmd = [str(path)] + binary_args(name, args)
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired as e:
                partial = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
                rows += parse_lines(str(path), partial)
                rows.append(common.unavailable_row(name, f"timed out after {args.timeout} s: {' '.join(cmd)}",
                                                   "error", binary=str(path)))
                continue
            got = parse_lines(str(path), r.stdout)
            if r.returncode != 0 or not got:
                got.append(common.unavailable_row(name, f"exit status {r.returncode}: {r.stderr.strip()[-400:]}",
                                                  "error", binary=str(path)))
            rows += got
    doc = common.result_doc(COMMAND, args, rows)
    return common.write_outputs(args, COMMAND, doc)
