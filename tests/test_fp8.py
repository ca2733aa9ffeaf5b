"""The FP8 (e4m3) path: sp24's e4m3 rounding against torch's, sparsify24_fp8 and sparse24_fp8_mm
bit for bit against sp24.reference_fp8 on CPU (masks, indices, values, scales, counts, NaN rows),
Meta shapes, opcheck, torch.compile, and every refusal (the op, the rule and the value)."""

import struct

import pytest
import torch

from helpers import DEVICES, assert_bits_equal, gen, randn, requires_cuda, special, tie_heavy
from sp24 import _C, _ops
from sp24 import reference as ref
from sp24 import reference_fp8 as rf

ops = torch.ops.sp24
E4M3 = torch.float8_e4m3fn
HALF = [torch.bfloat16, torch.float16]
FLOATS = HALF + [torch.float32]


def _encode(f32: torch.Tensor) -> torch.Tensor:
    out = _C.e4m3_from_float(f32.contiguous().view(torch.uint8).numpy().tobytes())
    return torch.frombuffer(bytearray(out), dtype=torch.uint8)


# ---- the conversion every kernel runs (sp24/fp8.h) -------------------------------------------------
def _probe_floats() -> torch.Tensor:
    """Every e4m3 value, its neighbours one fp32 ulp away, every midpoint between two e4m3 values and
    its neighbours, the saturation boundary, specials, and 2^20 random bit patterns."""
    codes = torch.arange(256, dtype=torch.uint8).view(E4M3).float()
    fin = codes[torch.isfinite(codes)].unique()
    mids = (fin[1:] + fin[:-1]) / 2  # exact in fp32 (e4m3 values have 4 significant bits)
    pts = torch.cat([fin, mids, torch.tensor([448.0, 464.0, 480.0, 2.0 ** -10, 2.0 ** -9, 3e38, 1e-45])])
    pts = torch.cat([pts, -pts])
    bits = pts.view(torch.int32)
    near = torch.cat([bits - 1, bits, bits + 1])
    rnd = torch.randint(-2 ** 31, 2 ** 31 - 1, (1 << 20,), generator=gen(0), dtype=torch.int64).to(torch.int32)
    spec = torch.tensor([0x7F800000, -0x800000, 0x7FC00000, -0x400000, 0x7F800001, 0x7FFFFFFF, 0, -2 ** 31],
                        dtype=torch.int64).to(torch.int32)
    return torch.cat([near, rnd, spec]).view(torch.float32)


def test_e4m3_from_float_is_torchs_saturating_cast():
    x = _probe_floats()
    got = _encode(x)
    want = rf.e4m3(x).view(torch.uint8)
    nan = torch.isnan(x)
    # torch's cast gives NaN 0x7F / 0xFF with x's sign, as sp24 does: every bit equal, NaN included
    bad = (got != want).nonzero()
    assert bad.numel() == 0, (f"{bad.numel()} floats differ, first {x[bad[0]].item()!r} "
                              f"(bits {hex(x.view(torch.int32)[bad[0]].item() & 0xFFFFFFFF)}): "
                              f"{got[bad[0]].item():#x} vs {want[bad[0]].item():#x}")
    assert int(nan.sum()) > 1000  # the random patterns include NaNs of both signs
    assert set(got[x == float("inf")].tolist()) == {0x7E} and set(got[x == float("-inf")].tolist()) == {0xFE}


def test_e4m3_from_float_every_float_where_it_rounds():
    # every positive fp32 bit pattern whose exponent lies in [2^-12, 2^9] (the subnormal grid, the normal
    # range and the saturation boundary: outside it the result is 0 or 448; the sign bit is copied
    # alike for all, as the probes above check): the bits of torch's saturating cast (the conversion is
    # branch-free arithmetic: a rounding slip would show in some exponent)
    lo, hi = (127 - 12) << 23, ((127 + 10) << 23) - 1
    chunk = 1 << 24
    for start in range(lo, hi + 1, chunk):
        x = torch.arange(start, min(start + chunk, hi + 1), dtype=torch.int32).view(torch.float32)
        got, want = _encode(x), rf.e4m3(x).view(torch.uint8)
        bad = (got != want).nonzero()
        assert bad.numel() == 0, f"bits {hex(x.view(torch.int32)[bad[0]].item() & 0xFFFFFFFF)}: {got[bad[0]].item():#x} vs {want[bad[0]].item():#x}"


def test_e4m3_to_float_matches_torch():
    codes = bytes(range(256))
    got = torch.frombuffer(bytearray(_C.e4m3_to_float(codes)), dtype=torch.int32)
    want = torch.arange(256, dtype=torch.uint8).view(E4M3).float().view(torch.int32)
    assert torch.equal(got, want)
    assert struct.unpack("<f", _C.e4m3_to_float(b"\x7e"))[0] == 448.0


# ---- sparsify24_fp8 ------------------------------------------------------------------------------
def _rows_input(M, K, dtype, seed):
    """Random rows with an all-zero row, a row of tiny values, a row with an Inf and one with a NaN."""
    x = randn(M, K, dtype, seed) * 4
    x[0] = 0
    x[1] = (torch.randn(K, generator=gen(seed)) * 1e-5).to(dtype)
    x[2, 3] = float("inf")
    x[3, 5] = float("nan")
    return x


INPUTS = {"randn": lambda M, K, dt, s: randn(M, K, dt, s) * 5, "ties": tie_heavy, "special": special,
          "rows": _rows_input}


@pytest.mark.parametrize("kind", list(INPUTS))
@pytest.mark.parametrize("activation", [None, "relu2"])
@pytest.mark.parametrize("algo", ["largest", "largest_abs"])
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_sparsify24_fp8_bits_vs_reference(dtype, algo, activation, kind):
    x = INPUTS[kind](37, 200, dtype, 11)
    got = ops.sparsify24_fp8(x, algo, activation, True)
    want = rf.sparsify24_fp8(x, algo, activation, True)
    for name, g, w in zip(("values", "indices", "scales", "counts"), got, want):
        assert_bits_equal(g, w, f"{name} {dtype} {algo} {activation} {kind}")
    # the 16-bit selection is sparsify24's, and every finite row dequantises within e4m3's rounding
    v16, i16, _ = ops.sparsify24(x, algo, activation, False)
    assert torch.equal(got[1], i16)
    ok = torch.isfinite(got[2])
    deq = rf.dequantize_rows(got[0], got[2])[ok]
    exact = v16.float()[ok]
    # half the largest e4m3 step (32, between 256 and 448) in the row's units, and fp32 slack
    assert bool((deq - exact).abs().le(exact.abs().amax(-1, keepdim=True) / 448 * 16.01).all())


@pytest.mark.parametrize("kind", list(INPUTS))
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_quantize_rows_fp8_bits_vs_reference(dtype, kind):
    x = INPUTS[kind](29, 72, dtype, 5)
    for t in (x, x[:, 8:40], x.reshape(1, -1)):  # rows, a strided view, one scale for the whole tensor
        q, s = ops.quantize_rows_fp8(t)
        qr, sr = rf.quantize_rows(t)
        assert_bits_equal(q, qr, f"q {dtype} {kind} {tuple(t.shape)}")
        assert_bits_equal(s, sr, f"scales {dtype} {kind} {tuple(t.shape)}")


@pytest.mark.parametrize("kind", list(INPUTS))
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_sparsify24_transposed_fp8_bits_vs_reference(dtype, kind):
    x = INPUTS[kind](40, 36, dtype, 8)
    cols = torch.tensor([5, 0, 35, 17, 17, 2])
    for c in (None, cols):
        got = ops.sparsify24_transposed_fp8(x, "largest_abs", c)
        want = rf.sparsify24_transposed_fp8(x, "largest_abs", c)
        for name, g, w in zip(("values", "indices", "scales"), got, want):
            assert_bits_equal(g, w, f"{name} {dtype} {kind} columns={c is not None}")
    v, i, s = ops.sparsify24_transposed_fp8(torch.empty(40, 36, dtype=dtype, device="meta"), "largest", cols.to("meta"))
    assert (v.shape, v.dtype, i.shape, s.shape) == ((6, 20), E4M3, (6, 20), (6,))
    with pytest.raises(ValueError, match=r"sp24.sparsify24_transposed: x.size\(0\) .* must be a multiple of 4"):
        ops.sparsify24_transposed_fp8(x[:38], "largest_abs", None)


def test_rows_too_small_for_a_normal_scale():
    x = torch.tensor([[1e-45, -2e-45, 0.0, 1e-45], [1e-37, 0, 0, 0], [1e-33, 1e-34, 0, 0]], dtype=torch.float32)
    q, s = ops.quantize_rows_fp8(x)
    # amax / 448 is subnormal for the first two rows: the scale is 2^-126, the smallest normal float
    assert s[:2].view(torch.int32).tolist() == [0x00800000, 0x00800000]
    assert s[2].item() == pytest.approx(1e-33 / 448, rel=1e-6)
    assert bool(torch.isfinite(q.float()).all()) and bool((q.float().abs() <= 448).all())
    assert_bits_equal(q, rf.quantize_rows(x)[0])
    assert_bits_equal(s, rf.quantize_rows(x)[1])


def test_sparsify24_fp8_row_rules():
    x = _rows_input(8, 16, torch.bfloat16, 3)
    q, idx, s, _ = ops.sparsify24_fp8(x, "largest", None, False)
    assert s[0].item() == 1.0 and bool((q[0].view(torch.uint8) == 0).all())  # all-zero row: scale 1
    for r in (2, 3):  # Inf and NaN rows: scale NaN (0x7FFFFFFF) and every value NaN (0x7F)
        assert s[r].view(torch.int32).item() == rf.SCALE_NAN_BITS
        assert bool((q[r].view(torch.uint8) == rf.E4M3_NAN_BITS).all())
    fin = torch.isfinite(s)
    assert int(fin.sum()) == 6
    # the largest kept magnitude of a finite, non-zero row maps to 448 (0x7E) exactly
    amax_code = q[fin][1:].view(torch.uint8).bitwise_and(0x7F).amax(-1)
    assert set(amax_code.tolist()) == {0x7E}


def test_sparsify24_fp8_strided_rows_and_empty():
    big = randn(20, 72, torch.bfloat16, 5)
    x = big[:, 4:68]  # row stride 72
    got = ops.sparsify24_fp8(x, "largest", "relu2", True)
    want = rf.sparsify24_fp8(x.contiguous(), "largest", "relu2", True)
    for g, w in zip(got, want):
        assert_bits_equal(g, w)
    for shape in ((0, 8), (5, 0)):
        v, i, s, c = ops.sparsify24_fp8(torch.zeros(shape, dtype=torch.float16), "largest", None, True)
        assert v.shape == (shape[0], shape[1] // 2) and v.dtype == E4M3 and s.shape == (shape[0],)
        assert bool((s == 1).all()) and c.shape == (shape[1],)


@pytest.mark.parametrize("bad, err, match", [
    (lambda: ops.sparsify24_fp8(torch.zeros(4, 8, dtype=torch.float64), "largest", None, False), TypeError,
     r"sp24.sparsify24_fp8: x.dtype must be torch.float16, torch.bfloat16 or torch.float32, got torch.float64"),
    (lambda: ops.quantize_rows_fp8(torch.zeros(4, 8, dtype=torch.int32)), TypeError,
     r"sp24.quantize_rows_fp8: x.dtype must be torch.float16, torch.bfloat16 or torch.float32, got torch.int32"),
    (lambda: ops.quantize_rows_fp8(torch.zeros(8)), ValueError, r"sp24.quantize_rows_fp8: x must be 2-D"),
    (lambda: ops.sparsify24_fp8(torch.zeros(4, 10, dtype=torch.bfloat16), "largest", None, False), ValueError,
     r"sp24.sparsify24_fp8: x.size\(-1\) must be a multiple of 4, got 10"),
    (lambda: ops.sparsify24_fp8(torch.zeros(4, 8, dtype=torch.bfloat16), "top", None, False), ValueError,
     r"sp24.sparsify24_fp8: algo must be 'largest' or 'largest_abs', got 'top'"),
    (lambda: ops.sparsify24_fp8(torch.zeros(8, 4, dtype=torch.bfloat16).t(), "largest", None, False), ValueError,
     r"sp24.sparsify24_fp8: x must have stride 1 along its last dim"),
])
def test_sparsify24_fp8_refusals(bad, err, match):
    with pytest.raises(err, match=match):
        bad()


# ---- sparse24_fp8_mm -----------------------------------------------------------------------------
def _gemm_case(M=48, K=64, N=32, seed=0, bias=True, one_scale=False):
    x = (randn(M, K, torch.bfloat16, seed) * 3)
    v, i, s, _ = ops.sparsify24_fp8(x, "largest", "relu2", False)
    w = torch.randn(N, K, generator=gen(seed + 1))
    if one_scale:
        amax = w.abs().amax()
        wq, ws = rf.e4m3(w / (amax / 448)), (amax / 448).reshape(1)
    else:
        wq, ws = rf.quantize_rows(w)
    b = torch.randn(N, generator=gen(seed + 2)).bfloat16() if bias else None
    return v, i, s, wq.t(), ws, b


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("one_scale", [False, True])
@pytest.mark.parametrize("shape", [(16, 16, 16), (48, 64, 32), (64, 320, 80)])
def test_fp8_mm_bits_vs_reference(shape, one_scale, bias):
    v, i, s, b, bs, bb = _gemm_case(*shape, seed=sum(shape), bias=bias, one_scale=one_scale)
    got = ops.sparse24_fp8_mm(v, i, s, b, bs, bb, True)
    want = rf.mm_fp8(v, i, s, b, bs, bb)
    assert_bits_equal(got, want)
    assert got.dtype == torch.bfloat16 and got.shape == (shape[0], shape[2])
    # the same as the dense FP8 GEMM of the decompressed A
    assert_bits_equal(rf.dense_mm_fp8(rf.to_dense_fp8(v, i), s, b, bs, bb), want)


def test_fp8_mm_is_close_to_the_16bit_product():
    v, i, s, b, bs, _ = _gemm_case(64, 256, 64, seed=9, bias=False)
    x16 = rf.dequantize_rows(v, s)
    exact = ref.to_dense(x16, i).double() @ (b.double() * bs.double())
    got = ops.sparse24_fp8_mm(v, i, s, b, bs, None, True).double()
    assert ((got - exact).norm() / exact.norm()).item() < 5e-3  # only the bf16 output rounding differs


def test_fp8_mm_nan_rows_propagate_without_validation():
    x = randn(32, 64, torch.bfloat16, 4)
    x[5, 9] = float("nan")
    v, i, s, _ = ops.sparsify24_fp8(x, "largest", None, False)
    _, _, _, b, bs, _ = _gemm_case(32, 64, 16, seed=4, bias=False)
    out = ops.sparse24_fp8_mm(v, i, s, b, bs, None, False)
    assert bool(out[5].isnan().all()) and bool(torch.isfinite(out[torch.arange(32) != 5]).all())
    with pytest.raises(ValueError, match=r"sp24.sparse24_fp8_mm: a_scales must be finite and > 0, got nan at "
                                         r"position 5 \(1 bad scale\(s\) in all\)"):
        ops.sparse24_fp8_mm(v, i, s, b, bs, None, True)


def test_fp8_mm_malformed_indices_follow_the_16bit_rule():
    v, i, s, b, bs, _ = _gemm_case(32, 64, 16, bias=False)
    bad = torch.randint(0, 256, i.shape, generator=gen(3), dtype=torch.uint8)  # repeats, >= 4
    dense16 = ops.sparse24_to_dense(v.float().bfloat16(), bad)  # & 3, the second of two equal wins
    want = rf.dense_mm_fp8(rf.e4m3(dense16.float()), s, b, bs)
    assert_bits_equal(ops.sparse24_fp8_mm(v, bad, s, b, bs, None, True), want)


def test_per_tensor_quantisation_is_the_row_rule_on_the_flat_view():
    from sp24 import _fp8

    for kind in INPUTS:
        w = INPUTS[kind](24, 40, torch.bfloat16, 6)
        q, s = _fp8.quantize_tensor(w)
        qr, sr = rf.quantize_tensor(w)
        assert_bits_equal(q, qr, kind)
        assert_bits_equal(s, sr, kind)
        assert s.shape == (1,) and q.shape == w.shape


def _refusals():
    v, i, s, b, bs, bb = _gemm_case(32, 64, 16)
    mm = ops.sparse24_fp8_mm
    yield (lambda: mm(v.view(torch.uint8), i, s, b, bs, bb, True), TypeError,
           r"values.dtype must be torch.float8_e4m3fn, got torch.uint8")
    yield (lambda: mm(v, i, s, b.float(), bs, bb, True), TypeError, r"b.dtype must be torch.float8_e4m3fn")
    yield (lambda: mm(v, i, s, b.t().contiguous().t()[:, :8], bs[:8], bb[:8], True), ValueError,
           r"M, K and N must be multiples of 16 .* N = 8")
    yield (lambda: mm(v, i, s, b.contiguous(), bs, bb, True), ValueError, r"b must be K-major")
    yield (lambda: mm(v, i, s[:5], b, bs, bb, True), ValueError, r"a_scales must have shape \(32,\), got \[5\]")
    yield (lambda: mm(v, i, s, b, bs[:3], bb, True), ValueError, r"b_scales must have shape \(16,\) or \(1,\), got \[3\]")
    yield (lambda: mm(v, i, s.double(), b, bs, bb, True), TypeError, r"a_scales.dtype must be torch.float32")
    yield (lambda: mm(v, i, s, b, bs * 0, bb, True), ValueError, r"b_scales must be finite and > 0, got 0 at position 0")
    yield (lambda: mm(v, i, s, b, bs, bb.float(), True), TypeError, r"bias.dtype must be torch.bfloat16")
    yield (lambda: mm(v, i, s, b, bs, bb[:4], True), ValueError, r"bias must have shape \(16,\)")
    yield (lambda: mm(v, i, s, b[:32], bs, bb, True), ValueError, r"b.size\(0\) must equal K = 2 \* values.size\(1\) = 64")
    yield (lambda: mm(v, i, s, b, bs.to("meta"), bb, True), ValueError, r"must be on the same device")


@pytest.mark.parametrize("case", range(12))
def test_fp8_mm_refusals(case):
    bad, err, match = list(_refusals())[case]
    with pytest.raises(err, match=r"sp24.sparse24_fp8_mm: .*" + match):
        bad()


# ---- Meta, opcheck, torch.compile ----------------------------------------------------------------
def test_meta_shapes():
    x = torch.empty(40, 64, dtype=torch.bfloat16, device="meta")
    v, i, s, c = ops.sparsify24_fp8(x, "largest", "relu2", True)
    assert (v.shape, v.dtype, i.shape, i.dtype, s.shape, s.dtype, c.shape) == \
        ((40, 32), E4M3, (40, 32), torch.uint8, (40,), torch.float32, (64,))
    q, s8 = ops.quantize_rows_fp8(torch.empty(7, 24, device="meta"))
    assert (q.shape, q.dtype, s8.shape, s8.dtype) == ((7, 24), E4M3, (7,), torch.float32)
    b = torch.empty(16, 64, dtype=E4M3, device="meta").t()
    out = ops.sparse24_fp8_mm(v[:32], i[:32], s[:32], b, torch.empty(1, device="meta"), None, True)
    assert out.shape == (32, 16) and out.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="b must be K-major"):
        ops.sparse24_fp8_mm(v[:32], i[:32], s[:32], b.contiguous(), torch.empty(1, device="meta"), None, True)


# opcheck's test_schema multiplies the op's tensors to look for mutation, and torch has no mul for
# float8_e4m3fn; the other three checks (fake tensors, autograd registration, AOT dispatch) run.
OPCHECKS = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    x = (randn(32, 64, torch.bfloat16, 2) * 3).to(device)
    torch.library.opcheck(ops.sparsify24_fp8.default, (x, "largest", "relu2", True), test_utils=OPCHECKS)
    torch.library.opcheck(ops.sparsify24_fp8.default, (x.half(), "largest_abs", None, False), test_utils=OPCHECKS)
    torch.library.opcheck(ops.quantize_rows_fp8.default, (x.float(),), test_utils=OPCHECKS)
    torch.library.opcheck(ops.sparsify24_transposed_fp8.default, (x, "largest_abs", None), test_utils=OPCHECKS)
    v, i, s, b, bs, bb = (t.to(device) for t in _gemm_case(32, 64, 16))
    torch.library.opcheck(ops.sparse24_fp8_mm.default, (v, i, s, b, bs, bb, True), test_utils=OPCHECKS)
    with pytest.raises(Exception, match="not implemented for 'Float8_e4m3fn'"):  # why test_schema is left out
        torch.library.opcheck(ops.sparse24_fp8_mm.default, (v, i, s, b, bs, bb, True), test_utils="test_schema")


def test_compile_fullgraph_dynamic():
    def f(x, b, bs):
        v, i, s, _ = ops.sparsify24_fp8(x, "largest", "relu2", False)
        return ops.sparse24_fp8_mm(v, i, s, b, bs, None, False)

    cf = torch.compile(f, fullgraph=True, dynamic=True, backend="aot_eager")
    for M in (32, 48):
        x = randn(M, 64, torch.bfloat16, M) * 2
        _, _, _, b, bs, _ = _gemm_case(M, 64, 16, seed=M)
        assert_bits_equal(cf(x, b, bs), f(x, b, bs))


# ---- CUDA (a GPU check) --------------------------------------------------------------------------
@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", HALF + [torch.float32], ids=str)
@pytest.mark.parametrize("case", ["counts", "short_rows", "fused", "fused_misaligned", "fused_past_the_grid",
                                  "long_rows", "empty_rows"])
def test_cuda_sparsify24_fp8_bits(dtype, case):
    # with counts or rows under 1024: two kernels; without counts from 1024 to 32 KiB of kept values per
    # row: the one fused kernel (K = 16384 is fp32's limit; a misaligned view takes its scalar loads;
    # 70000 rows go round its grid-stride loop, the grid being capped at 65535 blocks); past it: two kernels
    M, K, algo, act, counts = {"counts": (300, 264, "largest", "relu2", True),
                               "short_rows": (300, 264, "largest", "relu2", False),
                               "fused": (40, 16384, "largest", "relu2", False),
                               "fused_misaligned": (40, 2050, "largest_abs", None, False),
                               "fused_past_the_grid": (70000, 1024, "largest", "relu2", False),
                               "long_rows": (40, 65536, "largest", "relu2", False),
                               "empty_rows": (5, 0, "largest", "relu2", False)}[case]
    x = _rows_input(M, K, dtype, 8) if K else torch.zeros(M, 0, dtype=dtype)
    if case == "fused_misaligned":
        x = x[:, 2:]
    got = ops.sparsify24_fp8(x.cuda(), algo, act, counts)
    want = ops.sparsify24_fp8(x, algo, act, counts)
    for g, w in zip(got, want):
        assert_bits_equal(g.cpu(), w)


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_cuda_sparsify24_transposed_fp8_bits(dtype):
    x = _rows_input(264, 300, dtype, 9)
    cols = torch.randperm(300, generator=gen(1))[:200]
    got = ops.sparsify24_transposed_fp8(x.cuda(), "largest_abs", cols.cuda())
    want = ops.sparsify24_transposed_fp8(x, "largest_abs", cols)
    for g, w in zip(got, want):
        assert_bits_equal(g.cpu(), w)


@requires_cuda
@pytest.mark.gpu
def test_cuda_per_tensor_quantisation_bits():
    from sp24 import _fp8

    w = _rows_input(64, 96, torch.bfloat16, 4)[4:]  # finite rows
    for t in (w, w[:1] * 0):
        got = _fp8.quantize_tensor(t.cuda())
        want = _fp8.quantize_tensor(t)
        for g, e in zip(got, want):
            assert_bits_equal(g.cpu(), e)


@requires_cuda
@pytest.mark.gpu
def test_cuda_fp8_mm_vs_cpu():
    if torch.cuda.get_device_capability() < (8, 9):
        v, i, s, b, bs, bb = (t.cuda() for t in _gemm_case(32, 64, 16))
        with pytest.raises(ValueError, match=r"sp24.sparse24_fp8_mm: FP8 GEMMs need compute capability 8.9"):
            ops.sparse24_fp8_mm(v, i, s, b, bs, bb, True)
        return
    v, i, s, b, bs, bb = _gemm_case(256, 512, 128, seed=3)
    want = ops.sparse24_fp8_mm(v, i, s, b, bs, bb, True).float()
    got = ops.sparse24_fp8_mm(v.cuda(), i.cuda(), s.cuda(), b.cuda(), bs.cuda(), bb.cuda(), True).float().cpu()
    torch.testing.assert_close(got, want, rtol=1.6e-2, atol=1e-2)  # fp32 accumulation order, one bf16 ulp
