"""`python -m sp24.bench moe`: routed Squared-ReLU experts, 2:4 (sp24.relu2_experts) against dense.

Rows, at one (T, d, F, E, k) (tokens, model dim, expert width, experts, experts per token; the
routing is a fixed random top-k with softmax weights, so every expert gets about T k / E tokens):
  dense_experts_eager   Hugging Face's eager experts loop (relu2_experts(sparse=False), op for op)
  dense_experts_grouped the dense experts through torch._grouped_mm (what Hugging Face's
                        "grouped_mm" implementation runs; CUDA bf16 only, else an unavailable row)
  sparse_experts        relu2_experts(sparse=True), the automatic dense fallback off (every expert 2:4)
  sparse_experts_auto   the same with the fallback on (each expert decides on its own token count)
each forward + backward (grads of x, both weight stacks and the routing weights), and the forward
alone ("_fwd" rows). speedup (sparse rows): the time of the faster dense row of the same phase
over the row's (baseline names it).

Shapes: the default is Nemotron-3-Nano-like (d=2688, expert width 1856, 128 experts, top-6) at
T=16384 tokens (768 per expert); "study" is the MoE study's layer (d=256, width 256, 8 experts,
top-2, T=4096); --tiny is for tests. Target (GPU): sparse >= 1.2x the dense experts fwd+bwd at the
Nano-like shape; CPU: <= 1.3x of the dense experts at the study's shape.
"""

from __future__ import annotations

import argparse

import torch

from . import common

COMMAND = "moe"
SHAPES = {"nano": (16384, 2688, 1856, 128, 6), "study": (4096, 256, 256, 8, 2), "tiny": (64, 16, 32, 4, 2)}


def add_parser(sub) -> None:
    p = sub.add_parser(COMMAND, help="routed experts: 2:4 relu2_experts vs the dense experts", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(p)
    p.add_argument("--shape", default=None, help="nano (default), study, or T,d,F,E,k")
    p.set_defaults(func=run)


def _shape(args) -> tuple:
    if args.tiny and not args.shape:
        return SHAPES["tiny"]
    s = args.shape or "nano"
    if s in SHAPES:
        return SHAPES[s]
    dims = common.parse_int_list(s, "--shape")
    if len(dims) != 5 or dims[1] % 8 or dims[2] % 8 or dims[4] > dims[3]:
        raise SystemExit(f"sp24.bench moe: --shape must be nano, study or T,d,F,E,k with d, F multiples of 8 and "
                         f"k <= E, got {s!r}")
    return tuple(dims)


def grouped_dense_experts(x, idx, wts, w1, w2):
    """The dense experts through torch._grouped_mm (pairs sorted by expert, one grouped GEMM per
    projection), the routing weights applied and the pairs summed per token."""
    T, k = idx.shape
    order = torch.argsort(idx.reshape(-1), stable=True)
    offs = torch.cumsum(torch.bincount(idx.reshape(-1), minlength=w1.shape[0]), 0).to(torch.int32)
    xs = x[order // k]
    h = torch._grouped_mm(xs, w1.transpose(-2, -1), offs=offs)
    y = torch._grouped_mm(torch.relu(h).square(), w2.transpose(-2, -1), offs=offs)
    y = y * wts.reshape(-1)[order, None].to(y.dtype)
    return torch.zeros(T * k, x.shape[1], dtype=y.dtype, device=y.device).index_copy(0, order, y).view(T, k, -1).sum(1)


def _parts():
    from sp24 import relu2_experts
    from sp24.ffn import fallback

    def sparse(auto):
        def fn(x, idx, wts, w1, w2):
            with fallback(auto):
                return relu2_experts(x, idx, wts, w1, w2, sparse=True)
        return fn

    return [
        ("dense_experts_eager", lambda *a: relu2_experts(*a, sparse=False)),
        ("dense_experts_grouped", grouped_dense_experts),
        ("sparse_experts", sparse(False)),
        ("sparse_experts_auto", sparse(True)),
    ]


def run(args) -> dict:
    T, d, F, E, k = _shape(args)
    dev, dt = args.device, args.torch_dtype

    def make_set(seed: int):
        g = torch.Generator(device=dev).manual_seed(seed)
        x = torch.randn(T, d, generator=g, device=dev).to(dt)
        logits = torch.randn(T, E, generator=g, device=dev)
        wts, idx = logits.softmax(-1).topk(k, dim=-1)
        w1 = (torch.randn(E, F, d, generator=g, device=dev) / d ** 0.5).to(dt)
        w2 = (torch.randn(E, d, F, generator=g, device=dev) / F ** 0.5).to(dt)
        dout = torch.randn(T, d, generator=g, device=dev).to(dt)
        return x, idx, wts, w1, w2, dout

    es = torch.empty((), dtype=dt).element_size()
    pool = common.make_pool(make_set, (2 * T * d + 2 * E * F * d) * es + T * k * 12, args)
    t = common.timer(args)
    flops = 2.0 * T * k * d * F * 2  # the two projections of every (token, expert) pair, forward
    rows = []
    for name, fn in common.progress(_parts(), args, "moe"):
        for phase, mult in (("fwd_bwd", 3), ("fwd", 1)):
            fields = {"model": phase, "T": T, "d": d, "F": F, "E": E, "k": k, "tokens_per_expert": T * k / E}
            step = _step(fn, phase)
            try:
                stats = t.run(lambda j, step=step: step(pool[j]), len(pool))
            except Exception as e:  # noqa: BLE001 - e.g. no torch._grouped_mm here; the other rows still count
                rows.append(common.unavailable_row(f"{name}_{phase}", f"{type(e).__name__}: {e}", "unavailable", **fields))
                continue
            rows.append({"name": f"{name}_{phase}", **fields, **stats, "status": "ok", "flops": flops * mult,
                         "tflops": common.tflops(flops * mult, stats["median_us"])})
    for phase in ("fwd_bwd", "fwd"):  # speed-up of the sparse rows over the faster dense row of the phase
        dense = [r for r in rows if r["model"] == phase and r["name"].startswith("dense") and r["status"] == "ok"]
        if not dense:
            continue
        best = min(dense, key=lambda r: r["median_us"])
        for r in rows:
            if r["model"] == phase and r["name"].startswith("sparse") and r["status"] == "ok":
                r["speedup"], r["baseline"] = best["median_us"] / r["median_us"], best["name"]
    doc = common.result_doc(COMMAND, args, rows, pool_sets=len(pool),
                            notes=["routing: a fixed random top-k with softmax weights per input set",
                                   "the sparse rows run one relu2_ffn per expert with tokens (the per-expert path)"])
    return common.write_outputs(args, COMMAND, doc)


def _step(fn, phase):
    def fwd_bwd(s):
        x, idx, wts, w1, w2, dout = s
        leaves = [t.detach().requires_grad_() for t in (x, wts, w1, w2)]
        out = fn(leaves[0], idx, leaves[1], leaves[2], leaves[3])
        return torch.autograd.grad(out, leaves, dout)

    def fwd(s):
        x, idx, wts, w1, w2, _ = s
        with torch.no_grad():
            return fn(x, idx, wts, w1, w2)

    return fwd_bwd if phase == "fwd_bwd" else fwd
