"""`python -m sp24.bench fp8`: the FP8 (e4m3) path, and where its time goes.

Rows (bf16 input, the paper's shapes: X (T, d), Y1 (T, F)):
  sparsify    clone (of the bf16 Y1), sparsify24_fp8 (relu2 + 2:4 + row quantisation, the op), and its
              two steps: sparsify24 (bf16) and quantize_rows_fp8 of the kept values
  gemm        Y3 = Y2 W2^T: sparse24_fp8_mm (one scale for W2, the FFN's) and with W2 per row, against
              the dense FP8 GEMM (torch._scaled_mm, row-wise; on CPU the exact reference arithmetic)
  ffn         relu2_ffn(fp8=True) forward + backward, 2:4 against dense FP8 (sparse=False), and the
              bf16 2:4 FFN for reference; the quantisation of X and of the weights in its own row

Targets (docs/DESIGN.md, 'Targets'; H100, T=16384, d=4096, F=16384): FP8 relu2 + sparsify +
quantise <= 1.3x clone; FP8 2:4 GEMM (16384 x 16384 @ 16384 x 4096) >= 1.5x torch._scaled_mm;
FP8 FFN fwd+bwd >= 1.2x FP8 dense.
"""

from __future__ import annotations

import argparse

import torch

from . import common

COMMAND = "fp8"
MAIN = (16384, 4096, 16384)  # (T, d, F)
TINY = (32, 16, 64)
BASELINES = ("clone", "dense_fp8_mm", "ffn_fp8_dense_fwd_bwd")  # the first row of each group


def add_parser(sub) -> None:
    p = sub.add_parser(COMMAND, help="the FP8 path: sparsify, 2:4 GEMM, FFN vs dense FP8", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(p)
    p.add_argument("--shape", default=None, help="T,d,F (default 16384,4096,16384; tiny 32,16,64)")
    p.set_defaults(func=run)


def _parts(T: int, d: int, F: int):
    """(name, model, fn(set), flops) per row; a set is (x, y1, v, i, q, s, w1, w2, w2q, w2s, w2rq, w2rs,
    dense_a): inputs, Y1, its bf16 2:4 (v, i) and e4m3 (q, s), the weights, W2 in e4m3 (one scale;
    per row) and the decompressed e4m3 Y2."""
    from sp24 import _fp8, relu2_ffn

    ops = torch.ops.sp24
    gemm = 2.0 * T * d * F

    def ffn_step(x, w1, w2, **kw):
        xg, w1g, w2g = (t.detach().requires_grad_() for t in (x, w1, w2))
        out = relu2_ffn(xg, w1g, w2g, **kw)
        return torch.autograd.grad(out, (xg, w1g, w2g), torch.ones_like(out))

    return [
        ("clone", "sparsify", lambda s: s[1].clone(), 0.0),
        ("sparsify24_fp8_relu2", "sparsify", lambda s: ops.sparsify24_fp8(s[1], "largest", "relu2", False), 0.0),
        ("sparsify24_relu2_bf16", "sparsify", lambda s: ops.sparsify24(s[1], "largest", "relu2", False), 0.0),
        ("quantize_rows_fp8_kept", "sparsify", lambda s: ops.quantize_rows_fp8(s[2]), 0.0),
        ("dense_fp8_mm", "gemm", lambda s: _fp8.dense_mm(s[12], s[5], s[8].t(), s[9], None), gemm),
        ("sparse24_fp8_mm", "gemm", lambda s: ops.sparse24_fp8_mm(s[4], s[3], s[5], s[8].t(), s[9], None, False), gemm),
        ("sparse24_fp8_mm_w2_rows", "gemm",
         lambda s: ops.sparse24_fp8_mm(s[4], s[3], s[5], s[10].t(), s[11], None, False), gemm),
        ("quantize_x_w1_w2", "ffn", lambda s: (ops.quantize_rows_fp8(s[0]), ops.quantize_rows_fp8(s[6]),
                                               _fp8.quantize_tensor(s[7])), 0.0),
        ("ffn_fp8_dense_fwd_bwd", "ffn", lambda s: ffn_step(s[0], s[6], s[7], sparse=False, fp8=True), 6 * gemm),
        ("ffn_fp8_sparse_fwd_bwd", "ffn", lambda s: ffn_step(s[0], s[6], s[7], sparse=True, fp8=True), 6 * gemm),
        ("ffn_bf16_sparse_fwd_bwd", "ffn", lambda s: ffn_step(s[0], s[6], s[7], sparse=True), 6 * gemm),
    ]


def run(args) -> dict:
    from sp24 import _fp8, reference_fp8
    from sp24.ffn import fallback

    if args.shape:
        dims = common.parse_int_list(args.shape, "--shape")
        if len(dims) != 3 or any(v % 16 for v in dims):
            raise SystemExit(f"sp24.bench fp8: --shape must be T,d,F, multiples of 16, got {args.shape!r}")
        T, d, F = dims
    else:
        T, d, F = TINY if args.tiny else MAIN
    dev = args.device
    bf = torch.bfloat16

    def make_set(seed: int):
        g = torch.Generator(device=dev).manual_seed(seed)
        x = torch.randn(T, d, generator=g, device=dev).to(bf)
        y1 = torch.randn(T, F, generator=g, device=dev).to(bf)
        v, i, _ = torch.ops.sp24.sparsify24(y1, "largest", "relu2", False)
        q, s = torch.ops.sp24.quantize_rows_fp8(v)
        w1 = (torch.randn(F, d, generator=g, device=dev) / d ** 0.5).to(bf)
        w2 = (torch.randn(d, F, generator=g, device=dev) / F ** 0.5).to(bf)
        w2q, w2s = _fp8.quantize_tensor(w2)
        w2rq, w2rs = torch.ops.sp24.quantize_rows_fp8(w2)
        dense_a = reference_fp8.to_dense_fp8(q, i)
        return x, y1, v, i, q, s, w1, w2, w2q, w2s, w2rq, w2rs, dense_a

    es = 2
    set_bytes = (T * d + T * F + T * F // 2 * (es + 1) + 2 * d * F) * es + T * F // 2 + T * F
    pool = common.make_pool(make_set, set_bytes, args)
    t = common.timer(args)
    rows, base = [], {}
    with fallback(False):
        for name, model, fn, flops in common.progress(_parts(T, d, F), args, "fp8"):
            fields = {"model": model, "T": T, "d": d, "F": F}
            try:
                stats = t.run(lambda j, fn=fn: fn(pool[j]), len(pool))
            except Exception as e:  # noqa: BLE001 - one broken part must not hide the others' numbers
                rows.append(common.unavailable_row(name, f"{type(e).__name__}: {e}", "error", **fields))
                continue
            row = {"name": name, **fields, **stats, "status": "ok"}
            if flops:
                row["flops"] = flops
                row["tflops"] = common.tflops(flops, stats["median_us"])
            if name in BASELINES:
                base[model] = stats["median_us"]
            elif model == "sparsify":
                row["ratio_to_clone"] = stats["median_us"] / base["sparsify"] if "sparsify" in base else None
            elif model in base and name.startswith(("sparse", "ffn")):
                row["speedup"] = base[model] / stats["median_us"]  # the baseline's time over this one's
            rows.append(row)
    doc = common.result_doc(COMMAND, args, rows, pool_sets=len(pool),
                            notes=["the dense FP8 GEMM is torch._scaled_mm (row-wise scales) on CUDA and the exact "
                                   "reference arithmetic (fp64) on CPU; CPU numbers say nothing about GPU speed"])
    return common.write_outputs(args, COMMAND, doc)
