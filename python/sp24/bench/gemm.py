"""`python -m sp24.bench gemm`: the FFN's second GEMM Y3 = Y2 @ W2.T with Y2 2:4 along F, sparse
(torch.ops.sp24.sparse24_mm, and the prebuilt-buffer cuSPARSELt op when it exists) against cuBLAS
dense (torch.mm) over T = 128 ... 65536.

Target of docs/DESIGN.md, 'Targets' (H100, bf16): T=16384, F=16384, d=4096: >= 1.6x faster than dense.
"""

from __future__ import annotations

import argparse

import torch

from . import common

COMMAND = "gemm"

# (label, d, F). The Squared-ReLU hidden size is 1.5x the SwiGLU one: two weight matrices instead
# of three at the same parameter count.
SHAPES = [
    ("llama3-8b-like", 4096, 21504),   # Llama-3-8B: d=4096, SwiGLU hidden 14336 -> 14336*1.5
    ("llama3-70b-like", 8192, 43008),  # Llama-3-70B: d=8192, SwiGLU hidden 28672 -> 28672*1.5
    ("design", 4096, 16384),           # docs/DESIGN.md's main shape ('Targets')
]
TOKENS = [128 << i for i in range(10)]  # 128 ... 65536
TINY_SHAPES = [("tiny", 16, 32)]
TINY_TOKENS = [16, 32, 64]  # multiples of 16: the cuSPARSELt op's rule
CSLT_OP = "sparse24_cslt_mm"


def add_parser(sub) -> None:
    p = sub.add_parser(COMMAND, help="2:4 GEMM vs cuBLAS dense", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(p)
    p.add_argument("--shapes", default=None, help="d:F[,d:F...] (default: 8B-like, 70B-like, docs/DESIGN.md's)")
    p.add_argument("--tokens", default=None, help="T list, e.g. 128,1024,16384 (default 128..65536)")
    p.add_argument("--bias", action="store_true",
                   help="also time a bias (N,): cuBLAS addmm, cslt_mm with the bias as a full (M, N) C "
                        "(what sp24 does: one extra M x N read), and cslt_mm followed by a separate add")
    p.set_defaults(func=run)


def cslt_prepare(values, indices, b):
    """A closure running the prebuilt-buffer cuSPARSELt GEMM on (values, indices) @ b, or raise
    LookupError saying why not. The op (another engineer's, in progress) is recognised from its
    schema so that this file does not have to change with it."""
    if not hasattr(torch.ops.sp24, CSLT_OP):
        raise LookupError(f"torch.ops.sp24.{CSLT_OP} is not in this build")
    op = getattr(torch.ops.sp24, CSLT_OP)
    schema = op.default._schema
    names = [a.name for a in schema.arguments]
    compress = getattr(torch.ops.sp24, "sparse24_cslt_compress", None)
    if compress is not None and names[:4] == ["compressed", "m", "k", "b"]:
        # Compress once (outside the timing): the FFN reuses one buffer for several GEMMs.
        buf = compress(values, indices)
        M, K = values.shape[0], 2 * values.shape[1]
        return lambda bb, bias=None: op(buf, M, K, bb, bias)
    raise LookupError(f"torch.ops.sp24.{CSLT_OP} has a signature this benchmark does not know: {schema}")


def _max_rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref32 = ref.float()
    return float((out.float() - ref32).abs().max() / ref32.abs().max().clamp_min(1e-30))


def run(args) -> dict:
    shapes, tokens = common.shapes_and_tokens(args, SHAPES, TOKENS, TINY_SHAPES, TINY_TOKENS)
    dev, dt = args.device, args.torch_dtype
    es = torch.empty((), dtype=dt).element_size()
    ops = torch.ops.sp24
    t = common.timer(args)
    rows = []
    cases = [(s, T) for s in shapes for T in tokens]
    for (label, d, F), T in common.progress(cases, args, "gemm", total=len(cases)):

        def make_set(seed: int, T=T, d=d, F=F):
            g = torch.Generator(device=dev).manual_seed(seed)
            y1 = torch.randn(T, F, generator=g, device=dev, dtype=torch.float32).to(dt)
            values, indices, _ = ops.sparsify24(y1, "largest", "relu2", False)
            a = torch.relu(y1) ** 2  # the dense Y2 the dense FFN multiplies
            # b = W2.T (F, d), contiguous for both paths so neither pays a hidden copy.
            b = (torch.randn(F, d, generator=g, device=dev, dtype=torch.float32) / F ** 0.5).to(dt)
            return a, values, indices, b

        set_bytes = T * F * es + T * F // 2 * (es + 1) + F * d * es
        flops = 2.0 * T * F * d
        base = {"model": label, "T": T, "d": d, "F": F, "flops": flops}
        try:
            pool = common.make_pool(make_set, set_bytes, args)
            a0, v0, i0, b0 = pool[0]
            ref = torch.mm(ops.sparse24_to_dense(v0, i0), b0)
            dense = t.run(lambda i: torch.mm(pool[i][0], pool[i][3]), len(pool))
        except Exception as e:  # noqa: BLE001 - e.g. out of memory at the largest T: keep the rest
            rows.append(common.unavailable_row("dense_mm", f"{type(e).__name__}: {e}", "error", **base))
            pool = None
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            continue
        rows.append({"name": "dense_mm", "status": "ok", **base, **dense,
                     "tflops": common.tflops(flops, dense["median_us"]), "speedup": 1.0})

        fns = None
        sparse_ops = [("sparse24_mm", lambda i: ops.sparse24_mm(pool[i][1], pool[i][2], pool[i][3], None, None))]
        try:
            fns = [cslt_prepare(s[1], s[2], s[3]) for s in pool]
            sparse_ops.append((CSLT_OP, lambda i: fns[i](pool[i][3])))
        except LookupError as e:
            rows.append(common.unavailable_row(CSLT_OP, str(e), **base))
        except Exception as e:  # noqa: BLE001
            rows.append(common.unavailable_row(CSLT_OP, f"{type(e).__name__}: {e}", "error", **base))
        timed = [(name, fn, ref) for name, fn in sparse_ops]
        if getattr(args, "bias", False):
            # Bias (d,): sp24 passes it to cuSPARSELt as a full (T, d) C (its own bias vector runs
            # along the other dim), one extra T x d read; against cuBLAS addmm and a separate add.
            biases = [(torch.randn(d, device=dev, dtype=torch.float32) / 4).to(dt) for _ in pool]
            ref_b = torch.addmm(biases[0], ops.sparse24_to_dense(v0, i0), b0)
            # (the dense baseline multiplies the un-sparsified Y2: no error against the 2:4 reference)
            timed.append(("dense_addmm_bias", lambda i: torch.addmm(biases[i], pool[i][0], pool[i][3]), None))
            if fns is not None:
                timed.append((f"{CSLT_OP}_bias_as_C", lambda i: fns[i](pool[i][3], biases[i]), ref_b))
                timed.append((f"{CSLT_OP}_then_add", lambda i: fns[i](pool[i][3]).add_(biases[i]), ref_b))
        for name, fn, expect in timed:
            try:
                err = None if expect is None else _max_rel_err(fn(0), expect)
                stats = t.run(fn, len(pool))
            except Exception as e:  # noqa: BLE001 - report and keep going
                rows.append(common.unavailable_row(name, f"{type(e).__name__}: {e}", "error", **base))
                continue
            rows.append({"name": name, "status": "ok", **base, **stats,
                         **({} if err is None else {"max_rel_err": err}),
                         "tflops": common.tflops(flops, stats["median_us"]),
                         "speedup": dense["median_us"] / stats["median_us"]})
        del pool, a0, v0, i0, b0, ref, sparse_ops, timed
        fns = None
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    series = {}
    for r in rows:
        if r["name"] != "dense_mm" and r["status"] == "ok":
            series.setdefault(f"{r['name']} {r['model']} (d={r['d']}, F={r['F']})", []).append((r["T"], r["speedup"]))
    plot = common.speedup_plot(series, f"2:4 GEMM vs cuBLAS dense, {args.dtype}, {common.gpu_name(dev)}")
    doc = common.result_doc(COMMAND, args, rows, cslt_direct_layout_checks=common.cslt_direct_checks())
    return common.write_outputs(args, COMMAND, doc, plots=[("gemm_speedup.png", plot)])
