"""What every sub-command shares: options, run metadata (GPU, versions, commit), input pools, the
JSON/markdown/PNG writers and the progress bar."""

from __future__ import annotations

import argparse
import datetime
import os
import json
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

from .timing import Timer, l2_bytes, pool_count

SCHEMA_VERSION = 1
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_common_args(p: argparse.ArgumentParser, *, dtype_default: str = "bfloat16") -> None:
    p.add_argument("--out", required=True, type=Path, help="directory for <cmd>.json, <cmd>.md and plots")
    p.add_argument("--device", default=default_device(), help="cuda (default if available) or cpu")
    p.add_argument("--dtype", default=dtype_default, choices=sorted(DTYPES), help="activation/weight dtype")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (CPU tests); never report these numbers")
    p.add_argument("--reps", type=int, default=None, help="timed runs per measurement (default 50, crossover 20, tiny 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 10, crossover 5, tiny 1)")
    p.add_argument("--l2-factor", type=float, default=2.0, help="rotate inputs through a pool >= this x L2")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Validate/complete the common options; errors name the option, the value and the remedy."""
    try:
        args.device = torch.device(args.device)
    except RuntimeError as e:
        raise SystemExit(f"sp24.bench: --device must be cpu or cuda[:N], got {args.device!r} ({e})") from e
    if args.device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"sp24.bench: --device {args.device} requested but torch.cuda.is_available() is False; "
                         "use --device cpu (with --tiny for a quick check)")
    if args.device.type not in ("cpu", "cuda"):
        raise SystemExit(f"sp24.bench: --device must be cpu or cuda[:N], got {args.device}")
    args.torch_dtype = DTYPES[args.dtype]
    if args.reps is None:
        args.reps = 3 if args.tiny else getattr(args, "default_reps", 50)
    if args.warmup is None:
        args.warmup = 1 if args.tiny else getattr(args, "default_warmup", 10)
    if args.reps < 1 or args.warmup < 0:
        raise SystemExit(f"sp24.bench: need --reps >= 1 and --warmup >= 0, got {args.reps} and {args.warmup}")
    if args.l2_factor <= 0:
        raise SystemExit(f"sp24.bench: --l2-factor must be > 0, got {args.l2_factor}")
    args.out = Path(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    cmd = getattr(args, "command", None)
    if (args.device.type == "cpu" and not args.tiny and cmd in ("sparsify", "gemm", "ffn", "crossover")
            and not getattr(args, "shape", None) and not getattr(args, "shapes", None)):
        # the defaults are the GPU targets' shapes: (16384, 16384) alone takes ~1.5 min on 2 cores
        print(f"sp24.bench {cmd}: running the GPU-sized default shapes on the CPU; this takes minutes. "
              f"For a quick check of the pipeline use --tiny (its numbers are not for reporting).",
              file=sys.stderr, flush=True)
    if args.device.type == "cuda":
        torch.cuda.set_device(args.device)
    return args


def timer(args) -> Timer:
    return Timer(args.device, warmup=args.warmup, reps=args.reps)


def make_pool(make_set: Callable[[int], tuple], set_bytes: int, args) -> list:
    """Input sets for rotation: pool_count(...) of them, made by make_set(seed)."""
    n = pool_count(set_bytes, l2_bytes(args.device), args.l2_factor)
    return [make_set(i) for i in range(n)]


def parse_int_list(s: str, what: str) -> list[int]:
    try:
        vals = [int(v) for v in s.split(",") if v.strip()]
    except ValueError as e:
        raise SystemExit(f"sp24.bench: {what} must be comma-separated integers, got {s!r}") from e
    if not vals or any(v <= 0 for v in vals):
        raise SystemExit(f"sp24.bench: {what} must be non-empty and positive, got {s!r}")
    return vals


def parse_shapes(s: str, what: str = "--shapes") -> list[tuple[int, int]]:
    """'4096:16384,8192:43008' -> [(d, F), ...]"""
    out = []
    for item in s.split(","):
        parts = item.split(":")
        if len(parts) != 2:
            raise SystemExit(f"sp24.bench: {what} items must be d:F, got {item!r} in {s!r}")
        d, F = (parse_int_list(p, what)[0] for p in parts)
        out.append((d, F))
    return out


# ---- metadata ------------------------------------------------------------------------------------
def shapes_and_tokens(args, shapes_default, tokens_default, tiny_shapes, tiny_tokens, rule: str = ""):
    """(shapes, tokens) from --shapes/--tokens, else the (tiny) defaults; d and F multiples of 8."""
    if args.shapes:
        shapes = [(f"d{d}-F{F}", d, F) for d, F in parse_shapes(args.shapes)]
    else:
        shapes = tiny_shapes if args.tiny else shapes_default
    tokens = parse_int_list(args.tokens, "--tokens") if args.tokens else (tiny_tokens if args.tiny else tokens_default)
    for _, d, F in shapes:
        if d % 8 or F % 8:
            raise SystemExit(f"sp24.bench: d and F must be multiples of 8{rule}, got d={d}, F={F}")
    return shapes, tokens


def git_commit() -> str:
    """HEAD of the checkout sp24 was imported from, or "unknown" (installed wheel, no git)."""
    import sp24

    try:
        r = subprocess.run(["git", "-C", str(Path(sp24.__file__).resolve().parent), "rev-parse", "HEAD"],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "unknown"


def gpu_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _ver(v) -> Optional[str]:
    # sp24._C.cslt_versions' codes: major*1000000 + minor*1000 + patch (unambiguous, unlike major*1000 + minor*100 + patch)
    return None if v is None or v < 0 else f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"


def cusparselt_versions() -> dict:
    """The cuSPARSELt sp24 runs with: `loaded` (the library the loader resolved; e.g. a newer 0.8.x
    wheel given with LD_PRELOAD, same SONAME), `headers` (what sp24 was compiled against), what torch
    reports, and LD_PRELOAD. cuSPARSELt 0.8.1 fixes H100/L4 regressions of 0.8.0 (torch 2.11's), so
    every benchmark JSON says which one it measured."""
    try:
        from sp24 import _C

        v = _C.cslt_versions()
    except Exception:  # noqa: BLE001 - an older build without cslt_versions
        v = {"header": None, "runtime": None}
    try:
        torch_v = torch.backends.cusparselt.version()
    except Exception:  # noqa: BLE001 - CPU torch
        torch_v = None
    return {"loaded": _ver(v.get("runtime")), "headers": _ver(v.get("header")),
            "torch_reports": torch_v, "ld_preload": os.environ.get("LD_PRELOAD") or None}


def metadata(args) -> dict:
    import sp24

    try:
        info = sp24.build_info()
    except Exception as e:  # noqa: BLE001 - a half-updated build must not lose the measurements
        info = {"error": f"sp24.build_info() failed: {type(e).__name__}: {e}"}
    return {
        "gpu": gpu_name(args.device),
        "device": str(args.device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cusparselt": cusparselt_versions()["loaded"],
        "cusparselt_versions": cusparselt_versions(),
        "git_commit": git_commit(),
        "dtype": args.dtype,
        "tiny": bool(args.tiny),
        "reps": args.reps,
        "warmup": args.warmup,
        "l2_bytes": l2_bytes(args.device),
        "l2_factor": args.l2_factor,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
        "build_info": info,
    }


def result_doc(command: str, args, rows: list[dict], **extra) -> dict:
    doc = {"schema": SCHEMA_VERSION, "command": command, "meta": metadata(args), "rows": rows}
    doc.update(extra)
    return doc


def cslt_direct_checks() -> list[dict]:
    """What the check of the direct cuSPARSELt layout writer found in this process, per shape:
    "same": True means the direct writer served that shape (csrc/cusparselt/cslt.h)."""
    from sp24 import _C
    return list(_C.cslt_direct_layout_checks())


def unavailable_row(name: str, reason: str, status: str = "unavailable", **fields) -> dict:
    """A row without numbers: status "unavailable" (not in this build / environment) or "error"."""
    row = dict(fields)
    row.update(name=name, status=status, reason=reason, median_us=None, p10_us=None, p90_us=None)
    return row


# ---- output --------------------------------------------------------------------------------------
def write_outputs(args, command: str, doc: dict, plots: Iterable[tuple[str, Callable]] = ()) -> dict:
    """Write <out>/<command>.json (validated), the PNG plots and <out>/<command>.md."""
    from .report import render_command
    from .validate import validate_result

    doc["plots"] = []
    for filename, draw in plots:
        path = args.out / filename
        note = save_plot(path, draw)
        if note is None:
            doc["plots"].append(filename)
        else:
            doc.setdefault("notes", []).append(note)
    validate_result(doc)
    (args.out / f"{command}.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (args.out / f"{command}.md").write_text(render_command(doc))
    written = [args.out / f"{command}.json", args.out / f"{command}.md", *(args.out / f for f in doc["plots"])]
    print(f"sp24.bench {command}: wrote {', '.join(str(w) for w in written)}"
          + "".join(f", {d}" for d in doc.get("data_files", []) if Path(d) not in written))
    return doc


def save_plot(path: Path, draw: Callable) -> Optional[str]:
    """draw(ax) on a fresh Agg figure saved to `path`; returns a note instead when matplotlib is missing
    (the GPU machine has no network: the numbers still land in JSON/markdown)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"matplotlib is not installed: {path.name} not drawn (pip install matplotlib)"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        draw(ax)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return None


def speedup_plot(series: dict, title: str, xlabel: str = "tokens T"):
    """A draw(ax) for {label: [(T, speedup), ...]} on a log2 T axis, with the 1.0 line."""

    def draw(ax):
        for label, pts in series.items():
            pts = [(t, s) for t, s in pts if s is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("speed-up over dense (x)")
        ax.set_title(title)
        if series:
            ax.legend(fontsize=8)

    return draw


def progress(iterable, args, desc: str, total: Optional[int] = None):
    """tqdm over `iterable` when installed and wanted, else the iterable itself."""
    if getattr(args, "no_progress", False):
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False)


def bytes_per_s(nbytes: int, us: Optional[float]) -> Optional[float]:
    return None if not us else nbytes / (us * 1e-6) / 1e9


def tflops(flops: float, us: Optional[float]) -> Optional[float]:
    return None if not us else flops / (us * 1e-6) / 1e12
