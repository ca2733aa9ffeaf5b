"""Markdown from bench result JSON: one table per result file (also written by each sub-command as
<out>/<command>.md) and `python -m sp24.bench report RESULTS_DIR`: the targets status (docs/DESIGN.md, 'Targets')
table plus every file's table, for bench/results/README.md."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .validate import result_errors

COMMAND = "report"


def add_parser(sub) -> None:
    p = sub.add_parser(COMMAND, help="markdown status table from a results directory",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results_dir", type=Path, help="directory holding <command>.json files")
    p.add_argument("--out", type=Path, default=None, help="write the markdown here (default: stdout)")
    p.set_defaults(func=run, no_resolve=True)


# ---- formatting ----------------------------------------------------------------------------------
def _f(v, fmt="{:.1f}", none="-"):
    return none if v is None else fmt.format(v)


def _us(r):
    if r.get("status") != "ok":
        return f"n/a ({r.get('status')}: {str(r.get('reason', ''))[:80]})"
    return f"{r['median_us']:.1f} ({r['p10_us']:.1f}-{r['p90_us']:.1f})"


def _mb(v):
    return _f(None if v is None else v / 2 ** 20)


_COLUMNS = {
    "sparsify": [("kernel", lambda r: r["name"]), ("M x K", lambda r: f"{r['M']} x {r['K']}"),
                 ("columns", lambda r: r["columns"]), ("us median (p10-p90)", _us),
                 ("GB/s", lambda r: _f(r.get("gbps"))), ("x clone", lambda r: _f(r.get("ratio_to_clone"), "{:.2f}"))],
    "gemm": [("model", lambda r: r["model"]), ("T", lambda r: r["T"]), ("d", lambda r: r["d"]),
             ("F", lambda r: r["F"]), ("op", lambda r: r["name"]), ("us median (p10-p90)", _us),
             ("TFLOP/s", lambda r: _f(r.get("tflops"))), ("speed-up", lambda r: _f(r.get("speedup"), "{:.2f}x"))],
    "ffn": [("model", lambda r: r["model"]), ("dtype", lambda r: r["dtype"]), ("T", lambda r: r["T"]),
            ("d", lambda r: r["d"]), ("F", lambda r: r["F"]), ("mode", lambda r: r["mode"]),
            ("impl", lambda r: r["name"]), ("us median (p10-p90)", _us),
            ("speed-up vs best dense", lambda r: _f(r.get("speedup"), "{:.2f}x")),
            ("saved act. MiB", lambda r: _mb(r.get("saved_activation_bytes"))),
            ("peak MiB", lambda r: _mb(r.get("peak_mem_bytes")))],
    "binaries": [("binary", lambda r: r["binary"]), ("name", lambda r: r["name"]), ("us median (p10-p90)", _us),
                 ("details", lambda r: ", ".join(f"{k}={v}" for k, v in (r.get("record") or {}).items()
                                                 if k not in ("median_us", "p10_us", "p90_us", "name")))],
}
_COLUMNS["crossover"] = _COLUMNS["ffn"]
_COLUMNS["fp8"] = [("part", lambda r: r["model"]), ("T x d x F", lambda r: f"{r['T']} x {r['d']} x {r['F']}"),
                   ("op", lambda r: r["name"]), ("us median (p10-p90)", _us),
                   ("TFLOP/s", lambda r: _f(r.get("tflops"))), ("x clone", lambda r: _f(r.get("ratio_to_clone"), "{:.2f}")),
                   ("speed-up vs dense FP8", lambda r: _f(r.get("speedup"), "{:.2f}x"))]

_COLUMNS["moe"] = [("phase", lambda r: r["model"]), ("T x d x F, E, k", lambda r: f"{r['T']} x {r['d']} x {r['F']}, {r['E']}, {r['k']}"),
                   ("impl", lambda r: r["name"]), ("us median (p10-p90)", _us), ("TFLOP/s", lambda r: _f(r.get("tflops"))),
                   ("speed-up vs best dense", lambda r: _f(r.get("speedup"), "{:.2f}x"))]


def table(headers: list[str], rows: list[list]) -> str:
    esc = lambda c: str(c).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_command(doc: dict) -> str:
    """Markdown for one result document."""
    m = doc["meta"]
    cols = _COLUMNS[doc["command"]]
    out = [f"## `{doc['command']}` on {m['gpu']} ({m['device']}, {m['dtype']})\n",
           f"torch {m['torch']}, CUDA {m['cuda']}, cuSPARSELt {m['cusparselt']}, commit `{m['git_commit'][:12]}`, "
           f"{m['reps']} timed runs after {m['warmup']} warm-up, inputs rotated through >= {m['l2_factor']}x L2 "
           f"({m['l2_bytes'] // 2 ** 20} MiB), {m['timestamp']}"
           + (" — **tiny shapes: a smoke test, not a result**" if m["tiny"] else "") + "\n",
           table([c[0] for c in cols], [[c[1](r) for c in cols] for r in doc["rows"]])]
    if doc.get("crossover"):
        ents = doc["crossover"]["entries"]
        out.append("Fallback table (" + (", ".join(doc.get("data_files", [])) or "not written") + "):\n\n")
        out.append(table(["d", "F", "dtype", "min T fwd", "min T fwd+bwd"],
                         [[e["d"], e["F"], e["dtype"], e["min_tokens_fwd"], e["min_tokens_fwd_bwd"]] for e in ents]))
    for note in doc.get("notes", []):
        out.append(f"\nNote: {note}\n")
    for png in doc.get("plots", []):
        out.append(f"\n![{png}]({png})\n")
    return "\n".join(out)


# ---- targets status (docs/DESIGN.md) -------------------------------------------------------------
def _pick(docs, command, pred, key):
    """Values of `key` over the ok rows matching pred of the non-tiny `command` documents."""
    vals = [r[key] for d in docs if d["command"] == command and not d["meta"]["tiny"]
            for r in d["rows"] if r["status"] == "ok" and r.get(key) is not None and pred(d, r)]
    return vals


def _bf16(d, r):
    return r.get("dtype", d["meta"]["dtype"]) == "bfloat16"


def _fp8_main(r):
    return (r["T"], r["d"], r["F"]) == (16384, 4096, 16384)


def _ffn_main(mode):
    return lambda d, r: (_bf16(d, r) and r["name"] == "sparse" and r["mode"] == mode
                         and (r["T"], r["d"], r["F"]) == (16384, 4096, 16384))


TARGETS = [
    # (what, command, row predicate, key, "max"/"min", target, comparison)
    ("fused relu2 + sparsify24 (16384, 16384), x clone", "sparsify",
     lambda d, r: _bf16(d, r) and r["name"] == "sparsify24_relu2" and (r["M"], r["K"]) == (16384, 16384),
     "ratio_to_clone", min, 1.2, "<="),
    ("fused relu2 + sparsify24 + GEMM-ready buffer (sparsify24_cslt), x clone", "sparsify",
     lambda d, r: _bf16(d, r) and r["name"] == "sparsify24_relu2_gemm_ready" and (r["M"], r["K"]) == (16384, 16384),
     "ratio_to_clone", min, 1.2, "<="),
    ("fused sparsify-transpose, 95/5 feature split, x clone", "sparsify",
     lambda d, r: _bf16(d, r) and r["name"] == "sparsify24_transposed_cols95" and (r["M"], r["K"]) == (16384, 16384),
     "ratio_to_clone", min, 1.5, "<="),
    ("2:4 GEMM T=16384 F=16384 d=4096, speed-up vs cuBLAS", "gemm",
     lambda d, r: _bf16(d, r) and r["name"] != "dense_mm" and (r["T"], r["d"], r["F"]) == (16384, 4096, 16384),
     "speedup", max, 1.6, ">="),
    ("FFN forward T=16384 d=4096 F=16384, speed-up", "ffn", _ffn_main("fwd"), "speedup", max, 1.25, ">="),
    ("FFN forward+backward, same shape, speed-up", "ffn", _ffn_main("fwd_bwd"), "speedup", max, 1.35, ">="),
    ("FFN saved activation memory, x dense", "ffn", _ffn_main("fwd_bwd"), "saved_activation_ratio", min, 0.6, "<="),
    # worst case over every measured T, dtype and mode: the automatic fallback must never lose > 2%
    ("FFN with auto fallback, any measured T, worst speed-up", "ffn",
     lambda d, r: r["name"] == "sparse_auto", "speedup", min, 0.98, ">="),
    # the FP8 path (python -m sp24.bench fp8) at T=16384, d=4096, F=16384
    ("FP8 relu2 + sparsify + quantise (sparsify24_fp8), x clone", "fp8",
     lambda d, r: r["name"] == "sparsify24_fp8_relu2" and _fp8_main(r), "ratio_to_clone", min, 1.3, "<="),
    ("FP8 2:4 GEMM, speed-up vs torch._scaled_mm", "fp8",
     lambda d, r: r["name"] == "sparse24_fp8_mm" and _fp8_main(r), "speedup", max, 1.5, ">="),
    ("FP8 FFN forward+backward, speed-up vs FP8 dense", "fp8",
     lambda d, r: r["name"] == "ffn_fp8_sparse_fwd_bwd" and _fp8_main(r), "speedup", max, 1.2, ">="),
    # routed experts (python -m sp24.bench moe) at the Nemotron-3-Nano-like shape, against the faster dense row
    ("MoE experts forward+backward (Nano-like), speed-up vs the dense experts", "moe",
     lambda d, r: r["name"].startswith("sparse_experts") and r["model"] == "fwd_bwd"
     and (r["T"], r["d"], r["F"], r["E"], r["k"]) == (16384, 2688, 1856, 128, 6), "speedup", max, 1.2, ">="),
]


def status_table(docs: list[dict]) -> str:
    rows = []
    for what, command, pred, key, best, target, cmp in TARGETS:
        vals = _pick(docs, command, pred, key)
        if not vals:
            rows.append([what, f"{cmp} {target}", "not measured", "-"])
            continue
        v = best(vals)
        ok = v <= target if cmp == "<=" else v >= target
        rows.append([what, f"{cmp} {target}", f"{v:.2f}", "PASS" if ok else "FAIL"])
    gpus = sorted({d["meta"]["gpu"] for d in docs if not d["meta"]["tiny"]}) or ["-"]
    return (f"### Targets of docs/DESIGN.md ({', '.join(gpus)}, bf16)\n\n"
            + table(["what", "target", "measured", "status"], rows))


def load_results(results_dir: Path) -> list[dict]:
    if not results_dir.is_dir():
        raise SystemExit(f"sp24.bench report: {results_dir} is not a directory (pass the --out of the bench runs)")
    docs = []
    for path in sorted(results_dir.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise SystemExit(f"sp24.bench report: {path} is not valid JSON ({e})") from e
        if not isinstance(doc, dict) or "command" not in doc or "rows" not in doc:
            continue  # not a bench result (e.g. a copied crossover table)
        errs = result_errors(doc)
        if errs:
            raise SystemExit(f"sp24.bench report: {path} does not match sp24/bench/schema.json:\n  " + "\n  ".join(errs[:10]))
        docs.append(doc)
    if not docs:
        raise SystemExit(f"sp24.bench report: no bench result JSON in {results_dir}; run e.g. "
                         f"`python -m sp24.bench gemm --out {results_dir}` first")
    return docs


def render_report(docs: list[dict]) -> str:
    return status_table(docs) + "\n" + "\n".join(render_command(d) for d in docs)


def run(args) -> str:
    text = render_report(load_results(args.results_dir))
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"sp24.bench report: wrote {args.out}")
    return text
