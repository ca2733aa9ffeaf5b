"""`python -m sp24.bench ffn`: the Squared-ReLU FFN, forward and forward+backward, sp24
(`sp24.relu2_ffn(..., sparse=True)`, automatic dense fallback off) against the dense FFN
(`sp24.ffn.dense_relu2_ffn`, best of eager and torch.compile, same dtype), plus peak memory and
the bytes autograd saves for backward. `sparse_auto` is sp24.relu2_ffn(sparse=True) as a user runs
it, automatic dense fallback on: docs/DESIGN.md's "never > 2% slower than dense at any T".

"fwd" is an inference forward (torch.no_grad); "fwd_bwd" is a training step: forward with
grad-requiring x, w1, w2, then torch.autograd.grad of all three (no .grad accumulation).

Targets of docs/DESIGN.md (H100, bf16, T=16384, d=4096, F=16384): fwd >= 1.25x, fwd+bwd >= 1.35x
faster than dense; saved activation memory <= 0.6x dense; sparse_auto >= 0.98x dense at every T.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib

import torch

from . import common

COMMAND = "ffn"
SHAPES = [("design", 4096, 16384)]  # docs/DESIGN.md's main FFN shape ('Targets')
TOKENS = [2048, 4096, 8192, 16384]
TINY_SHAPES = [("tiny", 16, 32)]
TINY_TOKENS = [16, 32]
MODES = ("fwd", "fwd_bwd")


def add_ffn_args(p: argparse.ArgumentParser, shapes_default: str = "4096:16384",
                 tokens_default: str = "2048,4096,8192,16384") -> None:
    p.add_argument("--shapes", default=None, help=f"d:F[,d:F...] (default {shapes_default})")
    p.add_argument("--tokens", default=None, help=f"T list (default {tokens_default})")
    p.add_argument("--compile", choices=("on", "off"), default="on",
                   help="also time torch.compile of the dense FFN (the baseline is the faster of the two)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend for the dense baseline (tests use 'eager': no codegen)")


def add_parser(sub) -> None:
    p = sub.add_parser(COMMAND, help="FFN fwd and fwd+bwd, dense vs sp24, memory", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(p)
    add_ffn_args(p)
    p.set_defaults(func=run)


# ---- implementations (looked up by name: a missing one gives 'unavailable' rows, not an error) -
def load_impls() -> dict:
    """{'dense': fn or None, 'sparse': fn or None, 'fallback_off': ctx factory, 'why': {...}}"""
    impls = {"dense": None, "sparse": None, "sparse_auto": None, "why": {}, "fallback_off": contextlib.nullcontext}
    try:
        mod = importlib.import_module("sp24.ffn")
    except ImportError as e:
        impls["why"]["dense"] = impls["why"]["sparse"] = f"sp24.ffn is not available ({e})"
        return impls
    impls["dense"] = getattr(mod, "dense_relu2_ffn", None)
    if impls["dense"] is None:
        impls["why"]["dense"] = "sp24.ffn.dense_relu2_ffn is not available"
    fn = getattr(mod, "relu2_ffn", None)
    if fn is None:
        impls["why"]["sparse"] = "sp24.relu2_ffn is not available"
    else:
        impls["sparse"] = impls["sparse_auto"] = lambda x, w1, w2: fn(x, w1, w2, sparse=True)
    if hasattr(mod, "fallback"):
        # The FFN's automatic dense fallback would turn small-T sparse runs into dense ones.
        impls["fallback_off"] = lambda: mod.fallback(False)
    return impls


def compiled(fn, backend: str):
    import torch._dynamo as dynamo

    # dynamic=None (automatic): the first T compiles a static graph, the second a T-dynamic one that
    # serves the rest of a sweep. dynamic=False would run one inductor compile per T and per mode
    # (fwd, fwd+bwd): too slow for gpu_check.sh's time box, and past dynamo's default recompile
    # limit of 8 in a crossover sweep. The GEMMs go to cuBLAS either way.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo.config, name):
            setattr(dynamo.config, name, max(getattr(dynamo.config, name), 64))
    return torch.compile(fn, dynamic=None, backend=backend)


# ---- measurements --------------------------------------------------------------------------------
def saved_storages_bytes(fn, args_, exclude=()) -> tuple[int, int]:
    """(all, excluding `exclude`) bytes of the distinct storages autograd saves while running fn(*args_);
    views of one storage count once, with the whole storage."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen = {}

    def pack(t):
        try:
            s = t.untyped_storage()
            seen[(s.device, s.data_ptr())] = (s.nbytes(), s.data_ptr() in skip)
        except (RuntimeError, NotImplementedError):  # tensor subclass without a storage
            seen[("noptr", id(t))] = (t.numel() * t.element_size(), False)
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args_)
    del out
    total = sum(n for n, _ in seen.values())
    return total, sum(n for n, skipped in seen.values() if not skipped)


def peak_memory(fn, device) -> int | None:
    """Peak bytes allocated above the level before fn() (CUDA only)."""
    if device.type != "cuda":
        return None
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def _implementations(impls, dense_compiled, with_auto: bool) -> list:
    """(name, fn or None, why unavailable or None) of each implementation measure_case times."""
    impl_fns = []
    candidates = [("dense_eager", impls["dense"]), ("dense_compile", dense_compiled), ("sparse", impls["sparse"])]
    if with_auto:
        candidates.append(("sparse_auto", impls["sparse_auto"]))
    for name, fn in candidates:
        if fn is None:
            why = impls["why"].get("sparse" if name.startswith("sparse") else "dense",
                                   "torch.compile disabled (--compile off)")
            impl_fns.append((name, None, why))
        else:
            impl_fns.append((name, fn, None))
    return impl_fns


def _add_ratios(rows: list, best_dense: dict) -> None:
    """Each ok row's speedup over the best dense implementation of its mode, and the sparse rows'
    saved-activation and peak-memory ratios to dense_eager."""
    dense_eager = {r["mode"]: r for r in rows if r["name"] == "dense_eager" and r["status"] == "ok"}
    for r in rows:
        if r["status"] != "ok":
            continue
        if r["mode"] in best_dense:
            r["dense_best"] = best_dense[r["mode"]][1]
            r["speedup"] = best_dense[r["mode"]][0] / r["median_us"]
        de = dense_eager.get(r["mode"])
        if r["name"] == "sparse" and de is not None:
            for key in ("saved_activation_bytes", "peak_mem_bytes"):
                if r.get(key) is not None and de.get(key):
                    r[key.replace("_bytes", "_ratio")] = r[key] / de[key]


def measure_case(args, impls, dense_compiled, d: int, F: int, T: int, dtype: torch.dtype, label: str,
                 with_auto: bool = False) -> list[dict]:
    """Rows for one (d, F, T, dtype): dense_eager, dense_compile, sparse (fallback off) and, with
    with_auto, sparse_auto (sp24.relu2_ffn as users call it: the automatic dense fallback on);
    modes fwd and fwd_bwd."""
    dev = args.device
    es = torch.empty((), dtype=dtype).element_size()
    dtname = str(dtype).replace("torch.", "")

    def make_set(seed: int):
        g = torch.Generator(device=dev).manual_seed(seed)
        rn = lambda *s, scale=1.0: (torch.randn(*s, generator=g, device=dev) * scale).to(dtype)  # noqa: E731
        x = rn(T, d).requires_grad_()
        w1 = rn(F, d, scale=d ** -0.5).requires_grad_()
        w2 = rn(d, F, scale=F ** -0.5).requires_grad_()
        return x, w1, w2, rn(T, d)

    pool = common.make_pool(make_set, (2 * T * d + 2 * F * d) * es, args)
    t = common.timer(args)
    base = {"model": label, "T": T, "d": d, "F": F, "dtype": dtname}
    # FLOPs of the dense FFN: 2 GEMMs forward, 4 backward (docs/DESIGN.md, 'The six GEMMs').
    flops = {"fwd": 2 * 2.0 * T * d * F, "fwd_bwd": 6 * 2.0 * T * d * F}

    impl_fns = _implementations(impls, dense_compiled, with_auto)
    rows = []
    best_dense = {}
    for name, fn, why in impl_fns:
        with contextlib.nullcontext() if name == "sparse_auto" else impls["fallback_off"]():
            for mode in MODES:
                row = {"name": name, "mode": mode, **base}
                fields = {"mode": mode, **base}
                if fn is None:
                    rows.append(common.unavailable_row(name, why, **fields))
                    continue

                def fwd(i, fn=fn):
                    x, w1, w2, _ = pool[i]
                    with torch.no_grad():
                        return fn(x, w1, w2)

                def fwd_bwd(i, fn=fn):
                    x, w1, w2, gy = pool[i]
                    out = fn(x, w1, w2)
                    return torch.autograd.grad(out, (x, w1, w2), gy)

                step = fwd if mode == "fwd" else fwd_bwd
                try:
                    stats = t.run(step, len(pool))
                    if mode == "fwd_bwd" and name != "dense_compile":
                        x, w1, w2, _ = pool[0]
                        row["saved_bytes"], row["saved_activation_bytes"] = saved_storages_bytes(
                            fn, (x, w1, w2), exclude=(w1, w2))
                        row["peak_mem_bytes"] = peak_memory(lambda: step(0), dev)
                except Exception as e:  # noqa: BLE001 - one failing implementation must not hide the rest
                    rows.append(common.unavailable_row(name, f"{type(e).__name__}: {e}", "error", **fields))
                    continue
                row.update(stats, status="ok", tflops=common.tflops(flops[mode], stats["median_us"]))
                if name.startswith("dense") and stats["median_us"] < best_dense.get(mode, (float("inf"),))[0]:
                    best_dense[mode] = (stats["median_us"], name)
                rows.append(row)

    _add_ratios(rows, best_dense)
    del pool
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return rows


RULE = " (sp24.relu2_ffn sparse=True)"


def dense_compiled_fn(args, impls):
    if args.compile == "off" or impls["dense"] is None:
        return None
    return compiled(impls["dense"], args.compile_backend)


def run(args) -> dict:
    shapes, tokens = common.shapes_and_tokens(args, SHAPES, TOKENS, TINY_SHAPES, TINY_TOKENS, RULE)
    impls = load_impls()
    dense_c = dense_compiled_fn(args, impls)
    rows = []
    cases = [(s, T) for s in shapes for T in tokens]
    for (label, d, F), T in common.progress(cases, args, "ffn", total=len(cases)):
        rows += measure_case(args, impls, dense_c, d, F, T, args.torch_dtype, label, with_auto=True)
    series = {}
    for r in rows:
        if r["name"] == "sparse" and r["status"] == "ok" and r.get("speedup") is not None:
            series.setdefault(f"{r['mode']} d={r['d']} F={r['F']}", []).append((r["T"], r["speedup"]))
    plot = common.speedup_plot(series, f"sp24 FFN vs best dense, {args.dtype}, {common.gpu_name(args.device)}")
    doc = common.result_doc(COMMAND, args, rows, cslt_direct_layout_checks=common.cslt_direct_checks())
    return common.write_outputs(args, COMMAND, doc, plots=[("ffn_speedup.png", plot)])
