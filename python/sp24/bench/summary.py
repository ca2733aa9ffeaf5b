"""One table, readable at a glance, of what a `bench/gpu_check.sh` call found: every step's result
and time against its time box, the test counts, the memcheck verdict, the cuSPARSELt that ran, and
the docs/DESIGN.md 'Targets' numbers against their targets (`report.status_table`).

    python -m sp24.bench summary OUTDIR [--out OUTDIR/SUMMARY.md]

Reads OUTDIR/summary.json (written by gpu_check.sh), junit.xml, <step>.log, the bench result JSON
and demo_gpu/summary.json, whichever exist; a missing piece shows as "-", never as an error.
"""

from __future__ import annotations

import argparse
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional

from . import report
from .validate import result_errors

COMMAND = "summary"


def add_parser(sub) -> None:
    p = sub.add_parser(COMMAND, help="one pass/fail table of a bench/gpu_check.sh output folder",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results_dir", type=Path, help="the OUTDIR of bench/gpu_check.sh")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    p.set_defaults(func=run, no_resolve=True)


def _json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def junit_counts(path: Path) -> Optional[dict]:
    """passed / failed / errors / skipped and the first failing test ids of a pytest junit XML."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    for s in suites:
        for k in counts:
            counts[k] += int(s.get(k, 0))
    first = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            first.append(f"{case.get('classname', '')}::{case.get('name', '')}".split(".")[-1])
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["first_failures"] = first[:5]
    return counts


def memcheck_errors(path: Path) -> Optional[int]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    m = re.findall(r"ERROR SUMMARY: (\d+) error", text)
    return sum(int(x) for x in m) if m else None


def _step_detail(name: str, out: Path, docs: list[dict]) -> str:
    if name == "tests":
        c = junit_counts(out / "junit.xml")
        if c is None:
            return "no junit.xml"
        s = f"{c['passed']} passed, {c['failures'] + c['errors']} failed, {c['skipped']} skipped"
        return s + (f"; first: {', '.join(c['first_failures'])}" if c["first_failures"] else "")
    if name == "memcheck":
        n = memcheck_errors(out / "memcheck.log")
        return "no ERROR SUMMARY in the log" if n is None else f"{n} sanitizer errors"
    if name.startswith("bench_") or name == "crossover":
        cmd = name[len("bench_"):] if name.startswith("bench_") else name
        rows = [r for d in docs if d["command"] == cmd for r in d["rows"]]
        if not rows:
            return "no result JSON"
        bad = [r for r in rows if r["status"] != "ok"]
        return f"{len(rows) - len(bad)}/{len(rows)} rows ok" + (f"; first problem: {bad[0]['name']}: "
                                                               f"{str(bad[0].get('reason', ''))[:60]}" if bad else "")
    if name == "goldens":
        g = _json(out / "goldens" / "cslt_goldens.json")
        if not g:
            return "no goldens/cslt_goldens.json"
        cases = g.get("cases", g if isinstance(g, list) else [])
        match = [c.get("cpu_emulation_matches") for c in cases if isinstance(c, dict)]
        return f"{len(cases)} cases, CPU emulation matches cuSPARSELt in {sum(bool(m) for m in match)}"
    if name == "demo":
        d = _json(out / "demo_gpu" / "summary.json")
        if not d:
            return "no demo_gpu/summary.json"
        gap = d.get("eval_loss_rel_gap")
        return (f"eval loss dense {d.get('final_eval_loss_dense', float('nan')):.4f}, 2:4 "
                f"{d.get('final_eval_loss_sparse', float('nan')):.4f}, gap {gap * 100:+.2f}% (target within 1%; "
                f"shortened run)" if gap is not None else "no losses in demo_gpu/summary.json")
    return ""


def load_docs(out: Path) -> list[dict]:
    """The valid bench result documents in `out` (invalid or foreign JSON is skipped, not fatal)."""
    docs = []
    for path in sorted(out.glob("*.json")):
        doc = _json(path)
        if isinstance(doc, dict) and "command" in doc and "rows" in doc and not result_errors(doc):
            docs.append(doc)
    return docs


def render(out: Path) -> tuple[str, bool]:
    """(markdown, all steps ok)."""
    s = _json(out / "summary.json") or {}
    env = _json(out / "env.json") or {}
    docs = load_docs(out)
    steps = s.get("steps", [])
    ok_all = bool(steps) and not s.get("failed")
    dry = bool(env.get("dry_run"))
    meta = next((d["meta"] for d in docs), {})
    cv = meta.get("cusparselt_versions") or {}
    verdict = "DRY RUN (nothing was executed)" if dry else "PASS" if ok_all else "FAIL"
    head = (f"## sp24 GPU check, call {s.get('call', '?')}: {verdict}\n\n"
            f"GPU {meta.get('gpu') or env.get('nvidia_smi') or '-'}; torch {meta.get('torch', '-')}; "
            f"cuSPARSELt loaded {cv.get('loaded', meta.get('cusparselt', '-'))} (headers {cv.get('headers', '-')}"
            f"{', LD_PRELOAD ' + cv['ld_preload'] if cv.get('ld_preload') else ''}); commit "
            f"`{str(env.get('git_commit', meta.get('git_commit', '-')))[:12]}`; "
            f"{s.get('total_seconds', '-')} s of a {s.get('budget_seconds', '-')} s budget\n")
    rows = []
    for st in steps:
        rc = st.get("rc")
        result = "dry-run" if dry and rc == 0 else "ok" if rc == 0 else ("SKIPPED (budget spent)" if rc == -1 else
                                       "TIMEOUT" if rc in (124, 137) else f"FAIL (rc {rc})")
        rows.append([st.get("step"), result, st.get("seconds", "-"), st.get("box", "-"),
                     _step_detail(st.get("step", ""), out, docs)])
    parts = [head, report.table(["step", "result", "s", "box s", "detail"], rows)]
    if s.get("call", 1) == 1 or docs:
        parts.append(report.status_table(docs) if docs else
                     "### Targets of docs/DESIGN.md: status\n\nno benchmark result JSON in this folder\n")
    checks = [c for d in docs for c in d.get("cslt_direct_layout_checks", [])]
    if checks:
        seen = {}
        for c in checks:
            seen[(c.get("writer"), c.get("dtype"), c.get("M"), c.get("K"))] = c.get("same")
        parts.append("\n### Direct cuSPARSELt layout writers (same bytes as cusparseLtSpMMACompress?)\n\n" +
                     report.table(["writer", "dtype", "M", "K", "same"],
                                  [[w, dt, M, K, "yes" if v else "NO"] for (w, dt, M, K), v in sorted(seen.items())]))
    return "\n".join(parts), ok_all


def run(args) -> str:
    if not args.results_dir.is_dir():
        raise SystemExit(f"sp24.bench summary: {args.results_dir} is not a directory (the OUTDIR of bench/gpu_check.sh)")
    text, _ = render(args.results_dir)
    if args.out is not None:
        args.out.write_text(text)
    else:
        print(text)
    return text
