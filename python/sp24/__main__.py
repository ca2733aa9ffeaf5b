"""`python -m sp24`: print the build info, then run every op on every available device against the
oracle (sp24.reference) and say what passed. Exit status 1 if anything failed."""

from __future__ import annotations

import argparse
import json
import sys

import torch

import sp24
from sp24 import _ops, reference, reference_fp8

_IV = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
       torch.float8_e4m3fn: torch.uint8}


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.cpu(), b.cpu()
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    # every bit, NaNs included (a selected NaN keeps its bits, an arithmetic one is canonical)
    return torch.equal(a.contiguous().view(_IV[a.dtype]), b.contiguous().view(_IV[b.dtype]))


def _checks(device: str, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(67, 96, generator=g).to(dtype)
    x[torch.rand(67, 96, generator=g) < 0.05] = float("nan")
    grad = torch.randn(67, 96, generator=g).to(dtype)
    b = torch.randint(-3, 4, (96, 24), generator=g).to(dtype)
    xt = torch.randn(64, 40, generator=g).to(dtype)
    cols = torch.randperm(40, generator=g)[:30]
    xd, gd, bd, xtd, colsd = (t.to(device) for t in (x, grad, b, xt, cols))

    def sparsify():
        ok = True
        for algo in ("largest", "largest_abs"):
            for act in (None, "relu2"):
                got = _ops.sparsify24(xd, algo, act, True)
                want = reference.sparsify24(x, algo, act, True)
                ok &= all(_same_bits(u, w) for u, w in zip(got, want))
        return ok

    def transposed():
        got = _ops.sparsify24_transposed(xtd, "largest_abs", colsd)
        want = reference.sparsify24_transposed(xt, "largest_abs", cols)
        return all(_same_bits(u, w) for u, w in zip(got, want))

    v, i, _ = reference.sparsify24(x, "largest", "relu2")
    vd, idd = v.to(device), i.to(device)
    yield "sparsify24", sparsify
    yield "sparsify24_transposed", transposed
    yield "sparse24_apply", lambda: _same_bits(_ops.apply(gd, idd), reference.apply(grad, i))
    yield "sparse24_apply_relu2_backward", lambda: _same_bits(
        _ops.apply_relu2_backward(gd, vd, idd), reference.apply_relu2_backward(grad, v, i))
    yield "sparse24_to_dense", lambda: _same_bits(_ops.to_dense(vd, idd), reference.to_dense(v, i))

    def mm():
        vi, ii, _ = reference.sparsify24(torch.randint(-3, 4, (67, 96), generator=g).to(dtype), "largest_abs")
        got = _ops.mm(vi.to(device), ii.to(device), bd, None, torch.float32)
        return torch.equal(got.cpu(), reference.mm(vi, ii, b, None, torch.float32))
    yield "sparse24_mm", mm

    def split():
        tv, ti, _ = reference.sparsify24(xt, "largest", "relu2")  # (64, 40) row-wise 2:4
        sc, dc = cols[:27], cols[27:]
        got = _ops.transposed_split(tv.to(device), ti.to(device), sc.to(device), dc.to(device), "largest_abs")
        return all(_same_bits(u, w) for u, w in zip(got, reference.transposed_split(tv, ti, sc, dc)))
    yield "sparse24_transposed_split", split

    def cslt():
        a = torch.randint(-3, 4, (32, 64), generator=g).to(dtype)
        bb = torch.randint(-3, 4, (64, 16), generator=g).to(dtype)
        vi, ii, _ = reference.sparsify24(a, "largest_abs")
        buf = _ops.cslt_compress(vi.to(device), ii.to(device))
        got = _ops.cslt_mm(buf, 32, 64, bb.to(device), None, None, False)
        return torch.equal(got.cpu(), reference.cslt_mm(vi, ii, bb))
    def sparsify_cslt():  # the GEMM-ready buffer straight from x: same values / indices / counts
        a = torch.randn(64, 96, generator=g).to(dtype)
        buf, ii, cc = _ops.sparsify24_cslt(a.to(device), "largest", "relu2", True)
        vr, ir, cr = reference.sparsify24(a, "largest", "relu2", True)
        vals = _ops.values_of(buf, 64, 96, dtype).cpu()
        return _same_bits(vals, vr) and torch.equal(ii.cpu(), ir) and torch.equal(cc.cpu(), cr) and \
            torch.equal(buf.cpu() if device == "cpu" else buf, _ops.cslt_compress(vr.to(device), ir.to(device)))
    if dtype != torch.float32:  # the GEMM-ready buffer is fp16/bf16 only (no 2:4 fp32 GEMM in cuSPARSELt)
        yield "sparse24_cslt_compress+mm", cslt
        yield "sparsify24_cslt", sparsify_cslt
        yield from _fp8_checks(device, dtype, x, g)


def _fp8_checks(device: str, dtype: torch.dtype, x: torch.Tensor, g: torch.Generator):
    """The FP8 ops (16-bit inputs): sparsify24_fp8 bit for bit; the GEMM on small integers with
    power-of-two scales, exact on every device (so compared with torch.equal on a GPU too)."""
    def sparsify_fp8():
        got = _ops.sparsify24_fp8(x.to(device), "largest", "relu2", True)
        return all(_same_bits(u, w) for u, w in zip(got, reference_fp8.sparsify24_fp8(x, "largest", "relu2", True)))

    def fp8_mm():
        vi, ii, _ = reference.sparsify24(torch.randint(-6, 7, (64, 96), generator=g).to(dtype), "largest_abs")
        v8 = reference_fp8.e4m3(vi.float())
        s = 2.0 ** torch.randint(-4, 3, (64,), generator=g).float()
        w8 = reference_fp8.e4m3(torch.randint(-6, 7, (32, 96), generator=g).float())
        ws = 2.0 ** torch.randint(-4, 3, (32,), generator=g).float()
        got = _ops.fp8_mm(v8.to(device), ii.to(device), s.to(device), w8.to(device).t(), ws.to(device))
        return _same_bits(got, reference_fp8.mm_fp8(v8, ii, s, w8.t(), ws))
    yield "sparsify24_fp8", sparsify_fp8
    if device == "cpu" or torch.cuda.get_device_capability() >= (8, 9):  # FP8 GEMMs need sm_89+
        yield "sparse24_fp8_mm", fp8_mm


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sp24", description=__doc__)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)

    info = sp24.build_info()
    devices = ["cpu"]
    if torch.cuda.is_available() and _ops.has_kernel("sparsify24", "CUDA"):
        devices.append("cuda")
    results = []
    for device in devices:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for name, check in _checks(device, dtype, seed=len(results)):
                try:
                    ok, err = bool(check()), None
                except Exception as e:  # noqa: BLE001 - report, keep going
                    ok, err = False, f"{type(e).__name__}: {e}"
                results.append({"op": name, "device": device, "dtype": str(dtype).replace("torch.", ""),
                                "passed": ok, "error": err})
    failed = [r for r in results if not r["passed"]]
    if args.json:
        print(json.dumps({"build_info": info, "results": results}, indent=2))
    else:
        print("sp24 build info")
        for k, v in info.items():
            print(f"  {k}: {v}")
        if not torch.cuda.is_available():
            print("  (no CUDA device: CUDA kernels, if built, are not exercised here)")
        print("\nops vs the oracle (sp24.reference), bit-exact:")
        for r in results:
            status = "PASS" if r["passed"] else "FAIL"
            print(f"  {status}  {r['op']:<30} {r['device']:<5} {r['dtype']}" + (f"  {r['error']}" if r["error"] else ""))
        print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
