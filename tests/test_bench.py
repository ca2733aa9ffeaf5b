"""sp24.bench: every sub-command end-to-end on CPU with --tiny (in-process), the JSON it writes
against schema.json, the md/png outputs, the timing helpers and the report."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import random

import pytest
import torch

from helpers import requires_cuda
from sp24.bench import crossover, timing
from sp24.bench.binaries import parse_lines
from sp24.bench.cli import main
from sp24.bench.validate import errors, load_schema, result_errors, validate_result

HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
FAST = ["--device", "cpu", "--tiny", "--reps", "2", "--warmup", "1", "--no-progress"]


def run_cmd(tmp_path, command: str, *extra: str) -> dict:
    assert main([command, "--out", str(tmp_path), *FAST, *extra]) == 0
    doc = json.loads((tmp_path / f"{command}.json").read_text())
    validate_result(doc)
    assert doc["command"] == command and doc["meta"]["tiny"] is True
    md = (tmp_path / f"{command}.md").read_text()
    assert md.startswith(f"## `{command}`") and "| --- |" not in md and "|---|" in md
    for png in doc["plots"]:
        assert (tmp_path / png).stat().st_size > 1000
    return doc


def ok_rows(doc, name=None):
    return [r for r in doc["rows"] if r["status"] == "ok" and (name is None or r["name"] == name)]


# ---- timing helpers -------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 7, 50])
def test_percentile_matches_numpy(n):
    np = pytest.importorskip("numpy")
    rng = random.Random(n)
    vals = [rng.uniform(0, 100) for _ in range(n)]
    s = sorted(vals)
    for q in (0, 10, 25, 50, 90, 100):
        assert timing.percentile(s, q) == pytest.approx(float(np.percentile(vals, q)), rel=1e-12)
    st = timing.summarize(vals)
    assert st["p10_us"] <= st["median_us"] <= st["p90_us"] and st["runs"] == n
    assert st["median_us"] == pytest.approx(float(np.median(vals)))
    assert st["min_us"] == min(vals)


def test_percentile_rejects_bad_input():
    with pytest.raises(ValueError, match="no samples"):
        timing.percentile([], 50)
    with pytest.raises(ValueError, match=r"q must be in \[0, 100\], got 101"):
        timing.percentile([1.0], 101)


def test_pool_count_covers_l2():
    l2 = 50 << 20  # an H100's L2
    for set_bytes in (100 << 10, 1 << 20, 3 << 20, 7 << 20, 33 << 20, 100 << 20, 512 << 20):
        n = timing.pool_count(set_bytes, l2)
        assert n * set_bytes >= 2 * l2  # the pool does not fit in L2, twice over
        assert n == 1 or (n - 1) * set_bytes < 2 * l2  # and is no larger than needed
    assert timing.pool_count(100 << 20, l2) == 1
    assert timing.pool_count(10 << 20, l2) == 10
    assert timing.pool_count(10 << 20, l2, factor=3.0) == 15
    assert timing.pool_count(1, l2) == 1024  # capped for tiny sets
    assert timing.pool_count(1, l2, max_count=5) == 5
    with pytest.raises(ValueError, match="max_count >= 1"):
        timing.pool_count(10, l2, max_count=0)


def test_timer_rotates_through_pool():
    seen = []
    t = timing.Timer("cpu", warmup=3, reps=7)
    st = t.run(seen.append, n_sets=4)
    assert seen == [i % 4 for i in range(10)]
    assert st["runs"] == 7 and 0 < st["p10_us"] <= st["median_us"] <= st["p90_us"]
    with pytest.raises(ValueError, match="n_sets must be >= 1"):
        t.run(seen.append, n_sets=0)


def test_l2_bytes_cpu_nominal():
    assert timing.l2_bytes("cpu") == timing.CPU_NOMINAL_L2_BYTES


@requires_cuda
@pytest.mark.gpu
def test_l2_bytes_cuda_from_device():
    assert timing.l2_bytes("cuda") == torch.cuda.get_device_properties(0).L2_cache_size > 0


# ---- schema validator -----------------------------------------------------------------------------
def test_validator_catches_violations(tmp_path):
    doc = run_cmd(tmp_path, "sparsify")
    assert result_errors(doc) == []
    bad = copy.deepcopy(doc)
    del bad["meta"]["gpu"]
    bad["rows"][0]["median_us"] = "fast"
    bad["rows"][1]["status"] = "maybe"
    bad["rows"][2]["p10_us"] = bad["rows"][2]["p90_us"] + 1.0
    del bad["rows"][3]["M"]
    errs = "\n".join(result_errors(bad))
    assert "$.meta: missing required key 'gpu'" in errs
    assert "$.rows[0].median_us: expected number or null" in errs
    assert "$.rows[1].status: expected one of" in errs
    assert "$.rows[2]: need p10_us <= median_us <= p90_us" in errs
    assert "$.rows[3]: sparsify rows need 'M'" in errs
    with pytest.raises(ValueError, match="does not match sp24/bench/schema.json"):
        validate_result(bad)
    table = load_schema()["definitions"]["crossover_table"]
    root = load_schema()
    assert errors({"schema": 1, "gpu": "g", "torch": "t", "measured_by": "m", "entries": []}, table, root) == []
    assert errors({"schema": 2, "gpu": "g", "torch": "t", "measured_by": "m", "entries": [], "x": 1}, table, root) == [
        "$.schema: expected 1, got 2", "$: unexpected key 'x'"]


# ---- sub-commands ---------------------------------------------------------------------------------
def test_sparsify_tiny(tmp_path):
    doc = run_cmd(tmp_path, "sparsify")
    names = [r["name"] for r in doc["rows"]]
    assert names == ["clone", "sparsify24_relu2", "sparsify24_relu2_counts", "sparsify24_relu2_gemm_ready",
                     "sparsify24_relu2_then_compress",
                     "sparsify24_transposed", "sparsify24_transposed_cols95", "sparse24_transposed_split95"]
    assert doc["cslt_direct_layout_checks"] == []  # CPU: the reference packing, no direct writer
    assert all(r["status"] == "ok" for r in doc["rows"]), doc["rows"]
    clone = ok_rows(doc, "clone")[0]
    assert clone["ratio_to_clone"] == 1.0 and clone["bytes"] == 2 * 64 * 128 * 2
    cols = ok_rows(doc, "sparsify24_transposed_cols95")[0]
    assert cols["columns"] == 128 - round(0.05 * 128)
    assert ok_rows(doc, "sparse24_transposed_split95")[0]["columns"] == cols["columns"]
    assert doc["pool_sets"] >= 1 and doc["meta"]["git_commit"]


def test_gemm_tiny(tmp_path):
    doc = run_cmd(tmp_path, "gemm")
    dense = ok_rows(doc, "dense_mm")
    assert sorted(r["T"] for r in dense) == [16, 32, 64]
    sparse = ok_rows(doc, "sparse24_mm")
    assert len(sparse) == 3
    for r in sparse + ok_rows(doc, "sparse24_cslt_mm"):
        assert r["max_rel_err"] < 2e-2  # the sparse GEMM really computed A @ b
        assert r["flops"] == 2.0 * r["T"] * r["d"] * r["F"] and r["speedup"] > 0
    assert {r["name"] for r in doc["rows"]} >= {"dense_mm", "sparse24_mm", "sparse24_cslt_mm"}
    assert ("gemm_speedup.png" in doc["plots"]) == HAVE_MPL


def test_ffn_tiny(tmp_path):
    doc = run_cmd(tmp_path, "ffn", "--compile-backend", "eager")
    by = {(r["name"], r["mode"], r["T"]): r for r in doc["rows"]}
    assert len(by) == 4 * 2 * 2  # dense_eager, dense_compile, sparse, sparse_auto x fwd, fwd_bwd x 2 T
    de = by[("dense_eager", "fwd_bwd", 32)]
    assert de["status"] == "ok" and de["dense_best"] in ("dense_eager", "dense_compile")
    # Dense Squared-ReLU FFN saves at least x and Y1 (T x F bf16) for backward.
    assert de["saved_activation_bytes"] >= 32 * 32 * 2 and de["saved_bytes"] > de["saved_activation_bytes"]
    assert by[("dense_compile", "fwd", 16)]["status"] == "ok"
    sp = by[("sparse", "fwd_bwd", 32)]
    if sp["status"] == "ok":
        assert sp["speedup"] > 0 and sp["saved_activation_ratio"] > 0
    else:
        assert "not available" in sp["reason"]


def test_fp8_tiny(tmp_path):
    doc = run_cmd(tmp_path, "fp8")
    names = [r["name"] for r in ok_rows(doc)]
    assert names == ["clone", "sparsify24_fp8_relu2", "sparsify24_relu2_bf16", "quantize_rows_fp8_kept",
                     "dense_fp8_mm", "sparse24_fp8_mm", "sparse24_fp8_mm_w2_rows", "quantize_x_w1_w2",
                     "ffn_fp8_dense_fwd_bwd", "ffn_fp8_sparse_fwd_bwd", "ffn_bf16_sparse_fwd_bwd"]
    rows = {r["name"]: r for r in doc["rows"]}
    assert rows["sparsify24_fp8_relu2"]["ratio_to_clone"] == pytest.approx(
        rows["sparsify24_fp8_relu2"]["median_us"] / rows["clone"]["median_us"])
    assert rows["sparse24_fp8_mm"]["speedup"] == pytest.approx(
        rows["dense_fp8_mm"]["median_us"] / rows["sparse24_fp8_mm"]["median_us"])
    assert "speedup" not in rows["dense_fp8_mm"] and "speedup" not in rows["quantize_x_w1_w2"]


def test_moe_tiny(tmp_path):
    doc = run_cmd(tmp_path, "moe")
    by = {r["name"]: r for r in doc["rows"]}
    want = [f"{n}_{p}" for n in ("dense_experts_eager", "dense_experts_grouped", "sparse_experts", "sparse_experts_auto")
            for p in ("fwd_bwd", "fwd")]
    assert list(by) == want
    for phase in ("fwd_bwd", "fwd"):
        dense = [by[f"dense_experts_{i}_{phase}"] for i in ("eager", "grouped") if by[f"dense_experts_{i}_{phase}"]["status"] == "ok"]
        best = min(dense, key=lambda r: r["median_us"])
        for n in ("sparse_experts", "sparse_experts_auto"):
            r = by[f"{n}_{phase}"]
            assert r["status"] == "ok" and r["baseline"] == best["name"]
            assert r["speedup"] == pytest.approx(best["median_us"] / r["median_us"])
        assert all((r["T"], r["d"], r["F"], r["E"], r["k"]) == (64, 16, 32, 4, 2) for r in by.values())


def test_moe_shape_errors(tmp_path):
    with pytest.raises(SystemExit, match="--shape must be nano, study or T,d,F,E,k"):
        main(["moe", "--out", str(tmp_path), *FAST, "--shape", "64,16,30,4,2"])


def test_crossover_tiny_writes_fallback_table(tmp_path):
    doc = run_cmd(tmp_path, "crossover", "--compile-backend", "eager", "--compile", "off")
    data_file = tmp_path / "data" / "crossover.json"
    table = doc["crossover"]
    if not ok_rows(doc, "sparse"):
        pytest.skip("sp24.relu2_ffn is not available: no crossover entries")
    assert json.loads(data_file.read_text()) == table
    assert {(e["d"], e["F"], e["dtype"]) for e in table["entries"]} == {(16, 32, "bfloat16"), (16, 32, "float16")}
    from sp24 import _fallback

    parsed = _fallback._validate(data_file, table)  # the FFN's own loader accepts it
    assert set(parsed["table"]) == {(16, 32, torch.bfloat16), (16, 32, torch.float16)}
    for e in table["entries"]:
        pts = {m: [(r["T"], r.get("speedup")) for r in doc["rows"] if r["name"] == "sparse" and r["mode"] == m
                   and r["dtype"] == e["dtype"]] for m in ("fwd", "fwd_bwd")}
        assert e["min_tokens_fwd"] == crossover.min_tokens(pts["fwd"])
        assert e["min_tokens_fwd_bwd"] == crossover.min_tokens(pts["fwd_bwd"])


def test_crossover_min_tokens_rule():
    assert crossover.min_tokens([(8, 0.5), (16, 1.2), (32, 1.1)]) == 16
    assert crossover.min_tokens([(8, 1.5), (16, 0.9), (32, 1.2)]) == 32  # must win at every larger T
    assert crossover.min_tokens([(32, 1.2), (8, 1.5), (16, 1.3)]) == 8  # order of points is irrelevant
    assert crossover.min_tokens([(8, 1.5), (16, None)]) == crossover.NEVER
    assert crossover.min_tokens([(8, 0.9), (16, 1.0)]) == crossover.NEVER  # a tie is not a win
    assert crossover.min_tokens([]) == crossover.NEVER


def test_binaries_tiny_reports_unavailable(tmp_path):
    doc = run_cmd(tmp_path, "binaries")
    assert [r["status"] for r in doc["rows"]] == ["unavailable", "unavailable"]
    assert all(("not built" in r["reason"]) or ("needs a CUDA device" in r["reason"]) for r in doc["rows"])


def test_binaries_parse_lines():
    out = ('noise\n{"name":"cusparselt_mm","T":128,"median_us":10.5,"p10_us":10.0,"p90_us":11.0}\n'
           '{"name":"cusparselt_mm","T":256,"status":"error","reason":"unsupported"}\n')
    rows = parse_lines("bench_gemm", out)
    assert [r["status"] for r in rows] == ["ok", "error"]
    assert rows[0]["record"]["T"] == 128 and rows[0]["median_us"] == 10.5 and rows[1]["reason"] == "unsupported"


def test_bad_options_are_clear(tmp_path):
    with pytest.raises(SystemExit, match=r"--tokens must be comma-separated integers, got 'a,b'"):
        main(["gemm", "--out", str(tmp_path), *FAST, "--tokens", "a,b"])
    with pytest.raises(SystemExit, match="d and F must be multiples of 8, got d=12, F=32"):
        main(["gemm", "--out", str(tmp_path), *FAST, "--shapes", "12:32"])
    with pytest.raises(SystemExit, match="--dtypes entries must be bfloat16 or float16"):
        main(["crossover", "--out", str(tmp_path), *FAST, "--dtypes", "float32"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="torch.cuda.is_available"):
            main(["sparsify", "--out", str(tmp_path), "--device", "cuda", "--tiny"])


# ---- report ---------------------------------------------------------------------------------------
def test_report_renders_status_table(tmp_path):
    res = tmp_path / "results"
    gemm = run_cmd(res, "gemm")
    # A non-tiny document at the main shape of docs/DESIGN.md ('Targets'), built from the real one (numbers chosen by the test).
    design = copy.deepcopy(gemm)
    design["meta"]["tiny"] = False
    design["meta"]["gpu"] = "Test GPU"
    row = dict(ok_rows(gemm, "sparse24_mm")[0], T=16384, d=4096, F=16384, speedup=1.7)
    design["rows"] = [row, dict(row, name="sparse24_cslt_mm", speedup=1.5)]
    validate_result(design)
    (res / "gemm_design.json").write_text(json.dumps(design))
    ffn = copy.deepcopy(design)
    ffn["command"] = "ffn"
    base = {"status": "ok", "median_us": 10.0, "p10_us": 9.0, "p90_us": 11.0, "model": "design", "dtype": "bfloat16",
            "T": 16384, "d": 4096, "F": 16384}
    ffn["rows"] = [dict(base, name="sparse", mode="fwd", speedup=1.2),
                   dict(base, name="sparse", mode="fwd_bwd", speedup=1.4, saved_activation_ratio=0.55),
                   dict(base, name="sparse_auto", mode="fwd", speedup=1.2),
                   dict(base, name="sparse_auto", mode="fwd", T=128, speedup=0.97)]  # worst case counts
    (res / "ffn.json").write_text(json.dumps(ffn))
    (res / "not_a_result.json").write_text(json.dumps({"schema": 1, "entries": []}))  # skipped

    out = tmp_path / "status.md"
    assert main(["report", str(res), "--out", str(out)]) == 0
    text = out.read_text()
    lines = {ln.split(" | ")[0].lstrip("| "): ln for ln in text.splitlines() if ln.startswith("| ")}
    assert "| 1.70 | PASS |" in lines["2:4 GEMM T=16384 F=16384 d=4096, speed-up vs cuBLAS"]  # best sparse op
    assert "| 1.20 | FAIL |" in lines["FFN forward T=16384 d=4096 F=16384, speed-up"]
    assert "| 1.40 | PASS |" in lines["FFN forward+backward, same shape, speed-up"]
    assert "| 0.55 | PASS |" in lines["FFN saved activation memory, x dense"]
    assert "| 0.97 | FAIL |" in lines["FFN with auto fallback, any measured T, worst speed-up"]
    assert "not measured" in lines["fused relu2 + sparsify24 (16384, 16384), x clone"]
    assert "Test GPU" in text and "## `gemm`" in text and "tiny shapes" in text
    assert text.count("| dense_mm |") == 3  # the tiny gemm file's own table is rendered too


def test_report_rejects_bad_dirs(tmp_path):
    with pytest.raises(SystemExit, match="is not a directory"):
        main(["report", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="no bench result JSON"):
        main(["report", str(tmp_path)])
    (tmp_path / "gemm.json").write_text(json.dumps({"command": "gemm", "rows": [], "schema": 3}))
    with pytest.raises(SystemExit, match=r"does not match sp24/bench/schema.json:\n  \$: missing required key"):
        main(["report", str(tmp_path)])


def test_speedup_math_in_rows(tmp_path):
    doc = run_cmd(tmp_path, "gemm", "--tokens", "16")
    dense = ok_rows(doc, "dense_mm")[0]
    for r in ok_rows(doc, "sparse24_mm"):
        assert math.isclose(r["speedup"], dense["median_us"] / r["median_us"])
        assert math.isclose(r["tflops"], r["flops"] / (r["median_us"] * 1e-6) / 1e12)


# ---- on a GPU: the same commands on CUDA (tiny shapes), and the compiled binaries if built ---------
@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("command", ["sparsify", "gemm", "ffn"])
def test_commands_tiny_on_cuda(tmp_path, command):
    extra = ["--compile-backend", "eager"] if command == "ffn" else []
    assert main([command, "--out", str(tmp_path), "--device", "cuda", "--tiny", "--reps", "3", "--warmup", "1",
                 "--no-progress", *extra]) == 0
    doc = json.loads((tmp_path / f"{command}.json").read_text())
    validate_result(doc)
    assert doc["meta"]["gpu"] == torch.cuda.get_device_name() and doc["meta"]["l2_bytes"] > 0
    broken = [r for r in doc["rows"] if r["status"] == "error"]
    assert not broken, broken
    for r in doc["rows"]:
        if r.get("max_rel_err") is not None:
            assert r["max_rel_err"] < 2e-2, r


@requires_cuda
@pytest.mark.gpu
def test_binaries_on_cuda(tmp_path):
    from sp24.bench.binaries import BINARIES, find_binary, search_dirs

    if any(find_binary(b, search_dirs()) is None for b in BINARIES):
        pytest.skip("compiled benchmarks not built (SP24_BUILD_BENCH=ON at pip-install time)")
    assert main(["binaries", "--out", str(tmp_path), "--device", "cuda", "--tiny", "--reps", "3", "--warmup", "1",
                 "--no-progress"]) == 0
    doc = json.loads((tmp_path / "binaries.json").read_text())
    names = {r["name"] for r in doc["rows"] if r["status"] == "ok"}
    assert {"cusparselt_mm", "cublas_gemm", "clone", "sparsify24_relu2", "sparsify24_transposed_cols95"} <= names, doc["rows"]
