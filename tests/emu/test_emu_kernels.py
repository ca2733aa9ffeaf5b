"""The emulation lane: every CUDA kernel of csrc/cuda, compiled as host C++ against
csrc/emu/cuda_emu.h with ASan + UBSan, run bit for bit against the CPU kernels (torch.ops.sp24 on
CPU) and sp24.reference. Run it with `bash scripts/dev.sh emu` (scripts/emu.sh builds the library and
runs this folder with the sanitizer runtime preloaded); a sanitizer report aborts the run.

Comparisons are exact on the bits, NaN included, against the CPU kernels and the oracle alike: a NaN
made by arithmetic (relu2 and its backward) is the canonical NaN of its dtype everywhere
(sp24.reference.NAN_BITS); a selected NaN keeps its bits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib

import pytest
import torch

if not os.environ.get("SP24_EMU_LIB"):
    pytest.skip("the CUDA emulation lane runs with `bash scripts/dev.sh emu` (it builds the kernels as host C++ "
                "with ASan + UBSan and preloads the sanitizer runtime)", allow_module_level=True)

import emu  # noqa: E402  (tests/emu is on sys.path through this folder's conftest)
import sp24  # noqa: E402
from sp24 import reference as ref  # noqa: E402
from sp24 import reference_fp8 as ref_fp8  # noqa: E402

ops = torch.ops.sp24
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
HALF = [torch.float16, torch.bfloat16]
INT = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
       torch.float8_e4m3fn: torch.uint8}
MS = [1, 3, 7, 17, 65, 130]
KS = [4, 12, 36, 64, 200, 264, 520]  # K % 8 != 0: 4, 12, 36; K % 64 != 0: 4..264 but 64; 2+ column blocks: 264, 520
CSLT_MS = [64, 128, 192]
CSLT_KS = [32, 64, 96, 256, 320]
TS = [4, 12, 36, 64, 200, 272]  # tokens; 64 and 272 take the vector stores
NS = [1, 3, 7, 17, 64, 65, 130, 136]  # x columns; 64 and 136 take the vector loads
FS = [4, 12, 36, 64, 200, 264]
ALGOS = ["largest", "largest_abs"]
DATA = ["randn", "special", "ties"]

# Bit patterns put into the "special" inputs: NaNs with payloads and signs (one signalling),
# +-Inf, -0.0, subnormals.
SPECIAL_BITS = {
    torch.float32: [0x7FC00000, 0xFFC00001, 0x7F800001, 0x7FFFFFFF, 0xFFFFFFFF, 0x7F800000, 0xFF800000,
                    0x80000000, 0x00000001, 0x80000003, 0x007FFFFF],
    torch.float16: [0x7E00, 0xFE01, 0x7C01, 0x7FFF, 0xFFFF, 0x7C00, 0xFC00, 0x8000, 0x0001, 0x8003, 0x03FF],
    torch.bfloat16: [0x7FC0, 0xFFC1, 0x7F81, 0x7FFF, 0xFFFF, 0x7F80, 0xFF80, 0x8000, 0x0001, 0x8003, 0x007F],
}
# What a kernel must never read: the gaps of strided views and the bytes before an offset view hold
# this NaN, which ranks above everything (a read of it changes the selection).
GAP_BITS = {torch.float32: 0x7FA5A5A5, torch.float16: 0x7E5A, torch.bfloat16: 0x7FA5}

CASES = {"n": 0}  # compared kernel runs (printed by conftest.py)


def _signed(v: int, bits: int) -> int:
    return v - (1 << bits) if v >= 1 << (bits - 1) else v


def bits_tensor(values, dtype) -> torch.Tensor:
    nb = 32 if dtype == torch.float32 else 16
    return torch.tensor([_signed(v, nb) for v in values], dtype=INT[dtype]).view(dtype)


def seed_of(*key) -> int:
    return zlib.crc32(repr(key).encode())


def make_data(kind: str, M: int, K: int, dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "ties":
        pool = torch.tensor([-1.0, -0.0, 0.0, 0.0, 1.0, 2.0, 2.0])
        return pool[torch.randint(0, len(pool), (M, K), generator=g)].to(dtype)
    x = torch.randn(M, K, generator=g).to(dtype)
    if kind == "special":
        sp = bits_tensor(SPECIAL_BITS[dtype], dtype)
        r = torch.rand(M, K, generator=g)
        pick = torch.randint(0, len(sp), (M, K), generator=g)
        xi, si = x.view(INT[dtype]), sp.view(INT[dtype])
        xi[r < 0.35] = si[pick[r < 0.35]]
        if K % 4 == 0:  # some whole groups of equal values (heavy ties)
            grp = x.view(M, K // 4, 4)
            eq = torch.rand(M, K // 4, generator=g) < 0.1
            grp[eq] = grp[eq][:, :1].expand(-1, 4)
    return x


def place(x: torch.Tensor, layout: str) -> torch.Tensor:
    """x (M, K) copied into a view: "contig"; "odd" (offset 1 element, row stride K + 3); "pitched"
    (16-byte aligned offset and row stride K + 16 bytes); "shifted" (offset 1 element, row stride
    K + 16 bytes: aligned pitch, misaligned base). The buffer ends where the view ends, so an
    over-read runs into ASan's redzone; gaps hold GAP_BITS."""
    M, K = x.shape
    if layout == "contig":
        return x.clone()
    es = x.element_size()
    off, stride = {"odd": (1, K + 3), "pitched": (16 // es, K + 16 // es), "shifted": (1, K + 16 // es)}[layout]
    n = off + (M - 1) * stride + K
    buf = torch.empty(n, dtype=x.dtype)
    buf.view(INT[x.dtype]).fill_(_signed(GAP_BITS[x.dtype], 32 if x.dtype == torch.float32 else 16))
    v = buf.as_strided((M, K), (stride, 1), off)
    v.copy_(x)
    return v


def at_offset(t: torch.Tensor, offset: int) -> torch.Tensor:
    """A contiguous copy of t starting `offset` elements into an exactly sized buffer."""
    buf = torch.empty(offset + t.numel(), dtype=t.dtype)
    v = buf[offset:].view(t.shape)
    v.copy_(t)
    return v


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(INT[t.dtype]) if t.is_floating_point() else t.contiguous()


def _first(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor, n: int = 5) -> str:
    pos = mask.nonzero()[:n].tolist()
    ab, bb = _bits(a), _bits(b)
    fmt = (lambda v: hex(int(v) & 0xFFFFFFFF)) if a.is_floating_point() else int
    return "; ".join(f"{tuple(p)}: got {fmt(ab[tuple(p)])} want {fmt(bb[tuple(p)])}" for p in pos)


def same(what: str, got: torch.Tensor, want: torch.Tensor) -> None:
    """Bit-exact equality, NaN bits included: a NaN made by arithmetic (relu2 and its backward) is the
    canonical NaN of its dtype on every backend and in the oracle; a selected NaN keeps its bits."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    diff = _bits(got) != _bits(want)
    if bool(diff.any()):
        raise AssertionError(f"{what}: {int(diff.sum())} of {diff.numel()} elements differ in their bits: "
                             f"{_first(diff, got, want)}")


def done() -> None:
    CASES["n"] += 1


# ---- the emulator itself --------------------------------------------------------------------
def _launch(g, b):
    import ctypes
    c, m = ctypes.c_int(0), ctypes.c_int(-1)
    err = ctypes.create_string_buffer(512)
    rc = emu.lib().sp24emu_selftest_launch(*g, *b, ctypes.byref(c), ctypes.byref(m), err, ctypes.c_int64(512))
    return rc, c.value, m.value, err.value.decode()


def test_launch_limits_and_atomics():
    rc, count, top, _ = _launch((3, 2, 1), (32, 8, 1))
    assert rc == 0 and count == 3 * 2 * 256 and top == 3 * 2 * 256 - 1  # atomicAdd / atomicMax over 1536 threads
    rc, count, _, _ = _launch((1, 65535, 1), (1, 1, 1))
    assert rc == 0 and count == 65535
    rc, count, _, _ = _launch((1, 1, 1), (1024, 1, 1))
    assert rc == 0 and count == 1024
    for g, b, words in [((1, 1, 1), (1025, 1, 1), "1025 threads"), ((1, 1, 1), (32, 32, 2), "2048 threads"),
                        ((1, 1, 1), (1, 1, 65), "(1, 1, 65)"), ((1, 65536, 1), (1, 1, 1), "(1, 65536, 1)"),
                        ((1, 1, 65536), (1, 1, 1), "(1, 1, 65536)"), ((0, 1, 1), (1, 1, 1), "zero dimension")]:
        rc, count, _, err = _launch(g, b)
        assert rc == 1 and count == 0, (g, b)
        assert "invalid configuration argument" in err and words in err, err


@pytest.mark.parametrize("order", [0, 1, 2])
@pytest.mark.parametrize("threads", [32, 256, 1024])
def test_barrier_and_shuffle(order, threads):
    import ctypes
    out = torch.full((3 * threads,), -1, dtype=torch.int32)
    emu.lib().sp24emu_set_order(order)
    try:
        err = ctypes.create_string_buffer(512)
        assert emu.lib().sp24emu_selftest_barrier_shuffle(3, threads, emu._p(out), err, ctypes.c_int64(512)) == 0
    finally:
        emu.lib().sp24emu_set_order(-1)
    t = torch.arange(threads)
    want = ((t ^ 1) + 1) % threads  # the lane ^ 1 partner's neighbour slot, written before the barrier
    assert torch.equal(out.view(3, threads), want.to(torch.int32).expand(3, -1))


def _conversion_inputs() -> torch.Tensor:
    """fp32 bit patterns around every fp16/bf16 rounding boundary: all exponents, mantissas with the
    dropped bits at 0, just below / at / just above the halfway point, random ones, both signs."""
    g = torch.Generator().manual_seed(1234)
    exp = torch.arange(256, dtype=torch.int64).repeat_interleave(64)
    hi = torch.randint(0, 1 << 10, (exp.numel(),), generator=g)
    low13 = torch.tensor([0, 1, 0xFFF, 0x1000, 0x1001, 0x1FFF]).repeat(exp.numel() // 6 + 1)[: exp.numel()]
    low16 = torch.tensor([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF]).repeat(exp.numel() // 6 + 1)[: exp.numel()]
    rnd = torch.randint(0, 1 << 23, (exp.numel(),), generator=g)
    mant = torch.cat([(hi << 13) | low13, ((hi >> 3) << 16) | low16, rnd]) & 0x7FFFFF
    bits = (exp.repeat(3) << 23) | mant
    bits = torch.cat([bits, bits | (1 << 31)])
    return torch.where(bits >= 1 << 31, bits - (1 << 32), bits).to(torch.int32).view(torch.float32)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_conversions_round_to_nearest_even(dtype):
    """__float2half_rn / __float2bfloat16_rn against torch's RNE conversion on every non-NaN input
    near a rounding boundary (subnormals, overflow to Inf, ties); every NaN -> 0x7FFF. The widening
    conversions against torch's on all 65536 16-bit patterns."""
    import ctypes
    x = _conversion_inputs()
    out = torch.empty(x.numel(), dtype=torch.int16)
    f = emu.lib().sp24emu_f32_to_f16 if dtype == torch.float16 else emu.lib().sp24emu_f32_to_bf16
    f(emu._p(x), emu._p(out), ctypes.c_int64(x.numel()))
    nan = x.isnan()
    want = x.to(dtype).view(torch.int16)
    bad = (out != want) & ~nan
    assert not bool(bad.any()), f"{int(bad.sum())} conversions differ: {_first(bad, out, want)}"
    assert bool((out[nan] == 0x7FFF).all()), "a NaN must convert to 0x7FFF"
    h = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    wide = torch.empty(h.numel(), dtype=torch.float32)
    f = emu.lib().sp24emu_f16_to_f32 if dtype == torch.float16 else emu.lib().sp24emu_bf16_to_f32
    f(emu._p(h), emu._p(wide), ctypes.c_int64(h.numel()))
    want = h.view(dtype).float()
    nan = want.isnan()
    bad = (wide.view(torch.int32) != want.view(torch.int32)) & ~nan
    assert not bool(bad.any()), f"{int(bad.sum())} widenings differ: {_first(bad, wide, want)}"
    assert bool(wide[nan].isnan().all())
    if dtype == torch.float16:  # cuda_fp16.hpp: a NaN widens to 0x7FFFFFFF
        assert bool((wide.view(torch.int32)[nan] == 0x7FFFFFFF).all())
    else:  # bf16 widening is a shift: payload and sign kept
        assert torch.equal(wide.view(torch.int32)[nan] >> 16, h[nan].to(torch.int32))
    done()


def _run_aborting(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_sanitizers_are_live():
    """The lane only proves something if a sanitizer report fails it: a misaligned 16-byte load must
    abort (UBSan, no recovery) and a write past a tensor must abort (ASan)."""
    assert emu.lib().sp24emu_sanitized() == 1, "the emulation library was built without -fsanitize=address"
    head = "import ctypes, os, torch; lib = ctypes.CDLL(os.environ['SP24_EMU_LIB']); "
    r = _run_aborting(head + "b = torch.zeros(8, dtype=torch.int32); o = torch.zeros(1, dtype=torch.int32); "
                             "lib.sp24emu_selftest_misaligned(ctypes.c_void_p(b.data_ptr()), ctypes.c_void_p(o.data_ptr()))")
    assert r.returncode != 0 and "misaligned address" in r.stderr, r.stderr[-2000:]
    r = _run_aborting(head + "v = torch.zeros(4, 2, dtype=torch.float16); i = torch.zeros(4, 2, dtype=torch.uint8); "
                             "o = torch.zeros(4, 3, dtype=torch.float16); e = ctypes.create_string_buffer(64); "
                             "lib.sp24emu_to_dense(ctypes.c_void_p(v.data_ptr()), ctypes.c_void_p(i.data_ptr()), "
                             "ctypes.c_void_p(o.data_ptr()), ctypes.c_int64(4), ctypes.c_int64(4), 1, e, ctypes.c_int64(64))")
    assert r.returncode != 0 and "heap-buffer-overflow" in r.stderr, r.stderr[-2000:]


# ---- sparsify24 (row kernel: both paths, relu2, counts) ------------------------------------
@pytest.mark.parametrize("layout", ["contig", "odd", "pitched", "shifted"])
@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("M", MS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sparsify24_rows(dtype, M, K, layout):
    s = seed_of("rows", dtype, M, K, layout)
    for variant in range(2):
        relu2 = variant == 1
        algo = ALGOS[(s + variant) % 2]
        with_counts = variant == 0 or s % 2 == 0
        kind = DATA[(s + variant) % 3]
        x = place(make_data(kind, M, K, dtype, s + variant), layout)
        assert emu.vectorised(x) == (layout in ("contig", "pitched") and K % 8 == 0), (layout, K)
        what = f"sparsify24 {dtype} ({M}, {K}) {layout} {kind} algo={algo} relu2={relu2} counts={with_counts}"
        v, i, c, _ = emu.sparsify24(x, algo, relu2, with_counts)
        act = "relu2" if relu2 else None
        cv, ci, cc = ops.sparsify24(x, algo, act, with_counts)
        same(what + ": indices vs CPU", i, ci)
        same(what + ": values vs CPU", v, cv)
        same(what + ": counts vs CPU", c, cc)
        rv, ri, rc = ref.sparsify24(x, algo, act, with_counts)
        same(what + ": indices vs oracle", i, ri)
        same(what + ": values vs oracle", v, rv)
        same(what + ": counts vs oracle", c, rc)
        done()


# ---- both writers of the cuSPARSELt layout --------------------------------------------------
@pytest.mark.parametrize("K", CSLT_KS)
@pytest.mark.parametrize("M", CSLT_MS)
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_cslt_writers(dtype, M, K):
    s = seed_of("cslt", dtype, M, K)
    relu2, algo, kind = s % 2 == 0, ALGOS[(s >> 1) % 2], DATA[(s >> 2) % 3]
    x = make_data(kind, M, K, dtype, s).clone()
    what = f"cslt {dtype} ({M}, {K}) {kind} algo={algo} relu2={relu2}"
    v, i, c, meta = emu.sparsify24(x, algo, relu2, True, cslt=True)  # the fused writer (row kernel)
    cv, ci, cc = ops.sparsify24(x, algo, "relu2" if relu2 else None, True)
    same(what + ": fused values vs CPU", v, cv)
    same(what + ": fused indices vs CPU", i, ci)
    same(what + ": fused counts vs CPU", c, cc)
    nv = M * K // 2 * x.element_size()
    want = ref.cslt_layout(cv, ci)[nv: nv + M * K // 8]
    same(what + ": fused metadata vs sp24.reference.cslt_layout", meta, want)
    same(what + ": pack-kernel metadata vs sp24.reference.cslt_layout", emu.cslt_meta(ci), want)
    done()


# ---- sparsify24_transposed (+ column map, + duplicate-column fix-up) -------------------------
def columns_for(mode: str, N: int, g: torch.Generator):
    if mode == "all":
        return None
    if mode == "perm":
        return torch.randperm(N, generator=g)
    if mode == "reversed":
        return torch.arange(N - 1, -1, -1)
    if mode == "dups":
        c = torch.randint(0, N, (N + 2,), generator=g)
        return torch.cat([c, c[:2], torch.tensor([N - 1, 0, N - 1])])
    return torch.randperm(N, generator=g)[: max(1, N // 3)]  # subset


COLUMN_MODES = ["all", "perm", "reversed", "dups", "subset"]


@pytest.mark.parametrize("N", NS)
@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sparsify24_transposed(dtype, T, N):
    s = seed_of("t", dtype, T, N)
    for variant in range(4):
        g = torch.Generator().manual_seed(s + variant)
        layout = ["contig", "odd", "pitched", "shifted"][(s + variant) % 4]
        mode = COLUMN_MODES[(s + variant) % 5]
        kind, algo = DATA[(s // 3 + variant) % 3], ALGOS[(s + variant) % 2]
        x = place(make_data(kind, N, T, dtype, s + variant).t().contiguous(), layout)  # (T, N)
        cols = columns_for(mode, N, g)
        what = f"sparsify24_transposed {dtype} ({T}, {N}) {layout} {kind} {algo} columns={mode}"
        v, i = emu.sparsify24_transposed(x, algo, cols)
        cv, ci = ops.sparsify24_transposed(x, algo, cols)
        same(what + ": values vs CPU", v, cv)
        same(what + ": indices vs CPU", i, ci)
        rv, ri = ref.sparsify24_transposed(x, algo, cols)
        same(what + ": values vs oracle", v, rv)
        same(what + ": indices vs oracle", i, ri)
        done()


# ---- sparse24_transposed_split (+ duplicate-column fix-up for both outputs) ------------------
def split_columns(mode: str, F: int, g: torch.Generator):
    perm = torch.randperm(F, generator=g)
    nd = max(1, F // 20)
    empty = torch.empty(0, dtype=torch.int64)
    if mode == "split":
        return perm[nd:], perm[:nd]
    if mode == "dups_reversed":
        sc = torch.cat([torch.arange(F - 1, -1, -1), perm[:3]])
        return sc, torch.cat([perm[:2], perm[:2], torch.tensor([F - 1])])
    if mode == "sparse_only":
        return perm, empty
    if mode == "dense_only":
        return empty, torch.cat([perm, perm[:1]])
    return perm[: max(1, F // 3)], perm[-1:]  # subsets


SPLIT_MODES = ["split", "dups_reversed", "sparse_only", "dense_only", "subsets"]


@pytest.mark.parametrize("F", FS)
@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_transposed_split(dtype, T, F):
    s = seed_of("split", dtype, T, F)
    for variant in range(2):
        g = torch.Generator().manual_seed(s + variant)
        mode = SPLIT_MODES[(s + variant) % 5]
        kind, algo = DATA[(s + variant) % 3], ALGOS[(s // 5 + variant) % 2]
        garbage = (s + variant) % 7 == 0  # indices outside 0..3: every backend masks them to 2 bits
        cv0, ci0, _ = ops.sparsify24(make_data(kind, T, F, dtype, s + variant), "largest", None, False)
        if garbage:
            ci0 = torch.randint(0, 256, ci0.shape, generator=g, dtype=torch.uint8)
        off = variant  # variant 1: values and indices at an odd element offset (no paired loads)
        values, indices = at_offset(cv0, off), at_offset(ci0, off)
        sc, dc = split_columns(mode, F, g)
        what = f"transposed_split {dtype} (T={T}, F={F}) {kind} {algo} {mode} offset={off} garbage={garbage}"
        tv, ti, dt = emu.transposed_split(values, indices, sc, dc, algo)
        ctv, cti, cdt = ops.sparse24_transposed_split(values, indices, sc, dc, algo)
        same(what + ": tvalues vs CPU", tv, ctv)
        same(what + ": tindices vs CPU", ti, cti)
        same(what + ": dense_t vs CPU", dt, cdt)
        if not garbage:
            rtv, rti, rdt = ref.transposed_split(values, indices, sc, dc, algo)
            same(what + ": tvalues vs oracle", tv, rtv)
            same(what + ": tindices vs oracle", ti, rti)
            same(what + ": dense_t vs oracle", dt, rdt)
        done()


# ---- sparse24_apply, sparse24_apply_relu2_backward ---------------------------------------------
@pytest.mark.parametrize("layout", ["contig", "odd", "pitched"])
@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("M", MS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_apply(dtype, M, K, layout):
    s = seed_of("apply", dtype, M, K, layout)
    for backward in (False, True):
        g = torch.Generator().manual_seed(s + backward)
        kind = DATA[(s + backward) % 3]
        garbage = (s + backward) % 5 == 0
        x = place(make_data(kind, M, K, dtype, s + backward), layout)
        y2, idx, _ = ops.sparsify24(make_data("special", M, K, dtype, s + 7), "largest", "relu2", False)
        if backward and s % 2:  # negative y2 too: sqrt of a negative is an arithmetic NaN
            y2 = make_data("special", M, K // 2, dtype, s + 9)
        if garbage:
            idx = torch.randint(0, 256, idx.shape, generator=g, dtype=torch.uint8)
        what = f"apply {dtype} ({M}, {K}) {layout} {kind} backward={backward} garbage={garbage}"
        if backward:
            v = emu.apply(x, idx, y2)
            cv = ops.sparse24_apply_relu2_backward(x, y2, idx)
            same(what + ": values vs CPU", v, cv)
            if not garbage:
                same(what + ": values vs oracle", v, ref.apply_relu2_backward(x, y2, idx))
        else:
            v = emu.apply(x, idx)
            same(what + ": values vs CPU", v, ops.sparse24_apply(x, idx))
            if not garbage:
                same(what + ": values vs oracle", v, ref.apply(x, idx))
        done()


# ---- sparse24_to_dense ---------------------------------------------------------------------------
@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("M", MS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_to_dense(dtype, M, K):
    s = seed_of("dense", dtype, M, K)
    g = torch.Generator().manual_seed(s)
    kind = DATA[s % 3]
    v, i, _ = ops.sparsify24(make_data(kind, M, K, dtype, s), ALGOS[s % 2], None, False)
    garbage = s % 4 == 0
    if garbage:
        i = torch.randint(0, 256, i.shape, generator=g, dtype=torch.uint8)
    what = f"to_dense {dtype} ({M}, {K}) {kind} garbage={garbage}"
    out = emu.to_dense(v, i)
    same(what + ": vs CPU", out, ops.sparse24_to_dense(v, i))
    if not garbage:
        same(what + ": vs oracle", out, ref.to_dense(v, i))
    done()


# ---- FP8: the row quantisation kernel (sparsify24_fp8's second step) --------------------------------
FP8_NS = [2, 18, 40, 300]  # kept values per row: below, at and past one value per lane (32), several per lane
FP8_DATA = ["randn", "special", "ties", "rows"]


def _fp8_input(kind: str, M: int, K: int, dtype, seed: int) -> torch.Tensor:
    if kind != "rows":
        return make_data(kind, M, K, dtype, seed) * (1 + seed % 7) ** 3
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g).to(dtype)
    x[::3] = 0  # all-zero rows: scale 1
    if M > 1:  # one row of tiny values (subnormal scales) and one past e4m3's range before scaling
        x[1] = (torch.randn(K, generator=g) * 1e-6).to(dtype)
    if M > 2:
        x[2, ::2] = float("inf")
    return x


@pytest.mark.parametrize("kind", FP8_DATA)
@pytest.mark.parametrize("n", FP8_NS)
@pytest.mark.parametrize("M", [1, 7, 17, 65, 130])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_quantize_rows_e4m3(dtype, M, n, kind):
    s = seed_of("fp8", dtype, M, n, kind)
    x = _fp8_input(kind, M, 2 * n, dtype, s)
    act = "relu2" if s % 2 else None
    v, i, _ = ops.sparsify24(x, ALGOS[s % 2], act, False)
    q, scales = emu.quantize_rows(v)
    what = f"quantize_rows {dtype} ({M}, {n}) {kind} {act}"
    qc, ic, sc, _ = ops.sparsify24_fp8(x, ALGOS[s % 2], act, False)
    same(what + ": q vs CPU", q, qc)
    same(what + ": scales vs CPU", scales, sc)
    qr, sr = ref_fp8.quantize_rows(v)
    same(what + ": q vs oracle", q, qr)
    same(what + ": scales vs oracle", scales, sr)
    # the whole CUDA chain: the sparsify24 kernel, then the quantisation kernel
    ve, ie, _, _ = emu.sparsify24(x, ALGOS[s % 2], act == "relu2", False)
    qe, se = emu.quantize_rows(ve)
    same(what + ": chain q", qe, qc)
    same(what + ": chain scales", se, sc)
    same(what + ": chain indices", ie, ic)
    qd, sd = ops.quantize_rows_fp8(v)  # the dense op: the same kernel on the kept values
    same(what + ": quantize_rows_fp8 q", q, qd)
    same(what + ": quantize_rows_fp8 scales", scales, sd)
    done()


# ---- FP8: sparsify24_fp8 as one kernel (no counts) -------------------------------------------------
FUSED_KS = [4, 12, 36, 64, 200, 264, 2056]  # past 8 groups per thread at 2056 (256 threads, 514 groups)


@pytest.mark.parametrize("layout", ["contig", "odd", "pitched", "shifted"])
@pytest.mark.parametrize("kind", FP8_DATA)
@pytest.mark.parametrize("K", FUSED_KS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sparsify24_fp8_fused(dtype, K, kind, layout):
    """The one-kernel CUDA sparsify24_fp8 (the glue's path without counts): the bits of the CPU op
    (sparsify24, then the row quantisation), of the oracle and of the two-kernel CUDA chain."""
    s = seed_of("fused", dtype, K, kind, layout)
    M = [1, 3, 9][s % 3]
    x = place(_fp8_input(kind, M, K, dtype, s), layout)
    algo, act = ALGOS[s % 2], ("relu2" if (s >> 1) % 2 else None)
    # a grid of 1, 2 or M blocks: the blocks go round the row loop (shared memory reused per row)
    got = emu.sparsify24_fp8_fused(x, algo, act == "relu2", max_blocks=[1, 2, M][(s >> 2) % 3])
    assert got is not None, "the fused kernel takes every row of at most 32 KiB of kept values"
    q, i, sc = got
    what = f"sparsify24_fp8 fused {dtype} ({M}, {K}) {kind} {layout} {algo} {act}"
    qc, ic, scc, _ = ops.sparsify24_fp8(x, algo, act, False)
    same(what + ": q vs CPU", q, qc)
    same(what + ": indices vs CPU", i, ic)
    same(what + ": scales vs CPU", sc, scc)
    v, iv, _ = ops.sparsify24(x, algo, act, False)
    qr, sr = ref_fp8.quantize_rows(v)
    same(what + ": q vs oracle", q, qr)
    same(what + ": scales vs oracle", sc, sr)
    ve, ie, _, _ = emu.sparsify24(x, algo, act == "relu2", False)  # the two-kernel chain
    qe, se = emu.quantize_rows(ve)
    same(what + ": vs the chain, q", q, qe)
    same(what + ": vs the chain, indices", i, ie)
    same(what + ": vs the chain, scales", sc, se)
    done()


@pytest.mark.parametrize("dtype,K,fused", [(torch.float32, 16384, True), (torch.float32, 16392, False),
                                           (torch.bfloat16, 32768, True), (torch.bfloat16, 32776, False)])
def test_sparsify24_fp8_fused_takes_rows_up_to_32_kib(dtype, K, fused):
    """The shared-memory bound: a row of K/2 kept values up to 32 KiB runs fused (bit-exact with the CPU
    op), one past it is left to the two-kernel chain."""
    x = _fp8_input("randn", 2, K, dtype, seed_of("fusedK", dtype, K))
    got = emu.sparsify24_fp8_fused(x, "largest", True)
    assert (got is not None) == fused
    if fused:
        qc, ic, scc, _ = ops.sparsify24_fp8(x, "largest", "relu2", False)
        same(f"fused ({K}) q", got[0], qc)
        same(f"fused ({K}) indices", got[1], ic)
        same(f"fused ({K}) scales", got[2], scc)
    done()


@pytest.mark.parametrize("T,N", [(4, 3), (36, 17), (64, 65), (200, 130)])
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_sparsify24_transposed_fp8_chain(dtype, T, N):
    """sparsify24_transposed_fp8 on CUDA: the transposed kernel, then the row quantisation kernel."""
    s = seed_of("tfp8", dtype, T, N)
    x = make_data(DATA[s % 3], T, N, dtype, s)
    cols = torch.randperm(N, generator=torch.Generator().manual_seed(s))[: max(1, N - 2)]
    tv, ti = emu.sparsify24_transposed(x, "largest_abs", cols)
    q, sc = emu.quantize_rows(tv)
    what = f"sparsify24_transposed_fp8 {dtype} ({T}, {N})"
    qc, ic, scc = ops.sparsify24_transposed_fp8(x, "largest_abs", cols)
    same(what + ": values", q, qc)
    same(what + ": indices", ti, ic)
    same(what + ": scales", sc, scc)
    done()
