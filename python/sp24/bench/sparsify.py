"""`python -m sp24.bench sparsify`: each sparsify kernel against x.clone(), the bandwidth limit.

Targets (docs/DESIGN.md, 'Targets'; H100, bf16, (16384, 16384)): fused relu2 + sparsify24 <= 1.2x clone;
fused sparsify-transpose with the 95/5 feature split <= 1.5x clone.
sparse24_transposed_split95: the FFN backward's whole 95/5 feature split read straight from the
compressed Y2 (2:4 along the tokens of the 95% + the dense transpose of the 5%), against the same
clone of the dense (T, F) input, which the split itself never reads.
"""

from __future__ import annotations

import argparse

import torch

from . import common

COMMAND = "sparsify"
# (tokens, hidden): T=16384 tokens of an F=16384 FFN hidden layer, the main shape of docs/DESIGN.md.
MAIN_SHAPE = (16384, 16384)
TINY_SHAPE = (64, 128)
DENSE_FRACTION = 0.05  # the 5% densest features skip the token-direction 2:4 (feature split)


def add_parser(sub) -> None:
    p = sub.add_parser(COMMAND, help="sparsify kernels vs x.clone()", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(p)
    p.add_argument("--shape", default=None, help="M,K (default 16384,16384; tiny 64,128)")
    p.set_defaults(func=run)


def _then_compress(x):
    v, i, _ = torch.ops.sp24.sparsify24(x, "largest", "relu2", False)
    return torch.ops.sp24.sparse24_cslt_compress(v, i)


def _kernels(C: int, dt: torch.dtype):
    ops = torch.ops.sp24
    gemm_ready = [
        # relu2 + sparsify + the GEMM-ready cuSPARSELt buffer: one op (on CUDA one kernel, once
        # checked for the shape), and the two steps. bytes: what one fused pass must move (read x;
        # write the buffer = values + M*K/8 metadata, and the indices)
        ("sparsify24_relu2_gemm_ready", lambda x, y2, cols, sp: ops.sparsify24_cslt(x, "largest", "relu2", False),
         lambda M, K, es: M * K * es + M * K // 2 * (es + 1) + M * K // 8),
        ("sparsify24_relu2_then_compress", lambda x, y2, cols, sp: _then_compress(x),
         lambda M, K, es: M * K * es + M * K // 2 * (es + 1) + M * K // 8),
    ] if dt in (torch.float16, torch.bfloat16) else []
    return [
        # name, fn(x, y2, columns, split), bytes(M, K, es); split = (values, indices, sparse, dense)
        ("clone", lambda x, y2, cols, sp: x.clone(), lambda M, K, es: 2 * M * K * es),
        ("sparsify24_relu2", lambda x, y2, cols, sp: ops.sparsify24(x, "largest", "relu2", False),
         lambda M, K, es: M * K * es + M * K // 2 * (es + 1)),
        ("sparsify24_relu2_counts", lambda x, y2, cols, sp: ops.sparsify24(x, "largest", "relu2", True),
         lambda M, K, es: M * K * es + M * K // 2 * (es + 1) + 4 * K),
        *gemm_ready,
        ("sparsify24_transposed", lambda x, y2, cols, sp: ops.sparsify24_transposed(y2, "largest_abs", None),
         lambda M, K, es: M * K * es + K * M // 2 * (es + 1)),
        ("sparsify24_transposed_cols95", lambda x, y2, cols, sp: ops.sparsify24_transposed(y2, "largest_abs", cols),
         lambda M, K, es: M * C * es + C * M // 2 * (es + 1) + 8 * C),
        # reads the compressed (M, K/2) values + indices once; writes the 2:4 of C features and the
        # dense transpose of the other K - C
        ("sparse24_transposed_split95",
         lambda x, y2, cols, sp: ops.sparse24_transposed_split(sp[0], sp[1], sp[2], sp[3], "largest_abs"),
         lambda M, K, es: M * K // 2 * (es + 1) + C * M // 2 * (es + 1) + (K - C) * M * es + 8 * K),
    ]


def run(args) -> dict:
    if args.shape:
        dims = common.parse_int_list(args.shape, "--shape")
        if len(dims) != 2:
            raise SystemExit(f"sp24.bench sparsify: --shape must be M,K, got {args.shape!r}")
        M, K = dims
    else:
        M, K = TINY_SHAPE if args.tiny else MAIN_SHAPE
    if M % 4 or K % 4:
        raise SystemExit(f"sp24.bench sparsify: --shape M and K must be multiples of 4 (2:4 along both), got {M},{K}")
    dev, dt = args.device, args.torch_dtype
    es = torch.empty((), dtype=dt).element_size()
    C = K - int(round(DENSE_FRACTION * K))

    def make_set(seed: int):
        g = torch.Generator(device=dev).manual_seed(seed)
        x = torch.randn(M, K, generator=g, device=dev, dtype=torch.float32).to(dt)
        y2 = torch.relu(x) ** 2  # realistic Y2: ~50% zeros before training, the kernel sees the same work
        perm = torch.randperm(K, generator=g, device=dev)
        cols = perm[:C]  # the 95% sparsest features, any order
        # the FFN backward's input: the compressed row-wise 2:4 Y2, and its 95/5 feature split
        v, i, _ = torch.ops.sp24.sparsify24(x, "largest", "relu2", False)
        return x, y2, cols, (v, i, cols.sort().values, perm[C:].sort().values)

    pool = common.make_pool(make_set, 2 * M * K * es + M * K // 2 * (es + 1), args)  # x, y2, compressed Y2
    t = common.timer(args)
    rows, clone_us = [], None
    for name, fn, nbytes in common.progress(_kernels(C, dt), args, "sparsify"):
        nb = nbytes(M, K, es)
        fields = {"M": M, "K": K, "columns": C if name.endswith("95") else K, "bytes": nb}
        row = {"name": name, **fields}
        try:
            stats = t.run(lambda i, fn=fn: fn(*pool[i]), len(pool))
        except Exception as e:  # noqa: BLE001 - one broken kernel must not hide the others' numbers
            rows.append(common.unavailable_row(name, f"{type(e).__name__}: {e}", "error", **fields))
            continue
        row.update(stats)
        row["status"] = "ok"
        row["gbps"] = common.bytes_per_s(nb, stats["median_us"])
        if name == "clone":
            clone_us = stats["median_us"]
        row["ratio_to_clone"] = stats["median_us"] / clone_us if clone_us else None
        rows.append(row)
    doc = common.result_doc(COMMAND, args, rows, pool_sets=len(pool),
                             cslt_direct_layout_checks=common.cslt_direct_checks())
    return common.write_outputs(args, COMMAND, doc)
