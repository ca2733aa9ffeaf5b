"""The cuSPARSELt wrapper's contracts that hold before any GPU run.

- GEMM-ready buffers carry a checkable identity (layout kind, m, k, dtype, cuSPARSELt version, GPU
  architecture): a mismatch is refused, on every device.
- Buffer sizes are overflow-checked; the CPU packing masks indices to 2 bits.
- Sp24Tensor.packed() is rebuilt after an in-place change of values or indices.
- The dense GEMM keeps the contract (fp32 accumulation, one rounding) whatever torch's TF32 /
  reduced-precision / oneDNN precision flags say. CPU here; on CUDA:
  test_sparse24_mm_cuda_fallback_ignores_precision_flags.
- CUDA build lane (a CUDA-torch build, no GPU needed): RPATH to the wheel's cuSPARSELt, no pip CUDA
  include folder on any compile line, runtime and header cuSPARSELt versions agree.
- GPU: the fallback's once-per-reason warning, search outside graph capture, identity on CUDA.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import warnings

import pytest
import torch

import sp24
from helpers import DEVICES, assert_bits_equal, gen, requires_cuda, tie_free
from sp24 import _C, _ops, reference

LOWP = [torch.float16, torch.bfloat16]
CUDA_BUILD = bool(sp24.build_info()["with_cuda"])
requires_cuda_build = pytest.mark.skipif(not CUDA_BUILD, reason="CPU-torch build: no CUDA kernels, no cuSPARSELt "
                                                                 "linked (the CUDA build lane of .ci/run checks this)")


def int_sparse(M, K, dtype, seed):
    x = tie_free(M, K, torch.float32, seed=seed)
    v, i, _ = reference.sparsify24(x, "largest_abs")
    v = torch.clamp(torch.round(v), -2, 2)
    v[v == 0] = 1
    return v.to(dtype), i


def int_dense(K, N, dtype, seed):
    return torch.randint(-2, 3, (K, N), generator=gen(seed)).to(dtype)


# ---- identity ------------------------------------------------------------------------------------
def test_identity_words_cpu():
    w = _ops.cslt_identity("cpu", 32, 64, torch.bfloat16)
    assert w.dtype == torch.int64 and w.device.type == "cpu" and w.shape == (8,)
    magic = int.from_bytes(b"SP24CSLT", "big")
    assert w.tolist() == [magic, 2, 1, 32, 64, 2, 0, 0]  # format 2: word 6 is cslt_version_code
    assert _ops.cslt_identity("cpu", 32, 64, torch.float16)[5] == 1
    with pytest.raises(TypeError, match="float16 or torch.bfloat16, got torch.float32"):
        _ops.cslt_identity("cpu", 32, 64, torch.float32)


def _cpu_case(dtype=torch.bfloat16, M=32, K=64, N=16):
    v, i = int_sparse(M, K, dtype, seed=11)
    b = int_dense(K, N, dtype, seed=12)
    return v, i, _ops.cslt_compress(v, i), b


def test_identity_accepts_its_own_buffer():
    v, i, buf, b = _cpu_case()
    ident = _ops.cslt_identity(buf.device, 32, 64, torch.bfloat16)
    assert_bits_equal(_ops.cslt_mm(buf, 32, 64, b, identity=ident), reference.cslt_mm(v, i, b), "cslt_mm")


def test_identity_refuses_swapped_dims():
    # (m, k) swapped: the buffer size is symmetric, only the identity tells
    v, i, buf, _ = _cpu_case(M=32, K=64)
    ident = _ops.cslt_identity("cpu", 32, 64, torch.bfloat16)
    b = int_dense(32, 16, torch.bfloat16, seed=13)
    assert buf.numel() == _ops.cslt_compress(*int_sparse(64, 32, torch.bfloat16, seed=1)).numel()
    with pytest.raises(ValueError, match=r"sp24.sparse24_cslt_mm: the buffer is a \(32, 64\) bfloat16 buffer in "
                                         r"sp24's CPU packing, but this call needs a \(64, 32\) bfloat16"):
        _ops.cslt_mm(buf, 64, 32, b, identity=ident)


def test_identity_refuses_other_dtype():
    v, i, buf, b = _cpu_case(dtype=torch.bfloat16)
    ident = _ops.cslt_identity("cpu", 32, 64, torch.bfloat16)
    with pytest.raises(ValueError, match=r"bfloat16 buffer in sp24's CPU packing, but this call needs a \(32, 64\) "
                                         r"float16 buffer"):
        _ops.cslt_mm(buf, 32, 64, b.to(torch.float16), identity=ident)


def test_identity_refuses_other_version_and_layout():
    v, i, buf, b = _cpu_case()
    ident = _ops.cslt_identity("cpu", 32, 64, torch.bfloat16)
    other = ident.clone()
    other[2], other[6], other[7] = 2, _C.cslt_version_code(0, 8, 1), 90  # "cuSPARSELt 0.8.1's layout for sm_90"
    with pytest.raises(ValueError, match=r"the buffer is a \(32, 64\) bfloat16 buffer in cuSPARSELt 0.8.1's layout "
                                         r"for sm_90, but this call needs .* sp24's CPU packing"):
        _ops.cslt_mm(buf, 32, 64, b, identity=other)
    bad = ident.clone()
    bad[1] = 99
    with pytest.raises(ValueError, match="is not a GEMM-ready buffer identity of format 2"):
        _ops.cslt_mm(buf, 32, 64, b, identity=bad)
    # 0.10.0 and 1.0.0 are different layouts to the identity (cuSPARSELt's own major*1000 + minor*100
    # + patch gives both 1000)
    v10, v100 = other.clone(), other.clone()
    v10[6], v100[6] = _C.cslt_version_code(0, 10, 0), _C.cslt_version_code(1, 0, 0)
    with pytest.raises(ValueError, match=r"cuSPARSELt 0.10.0's layout for sm_90"):
        _ops.cslt_mm(buf, 32, 64, b, identity=v10)
    with pytest.raises(ValueError, match=r"cuSPARSELt 1.0.0's layout for sm_90"):
        _ops.cslt_mm(buf, 32, 64, b, identity=v100)
    with pytest.raises(ValueError, match=r"identity must be the CPU int64 tensor of 8 words"):
        _ops.cslt_mm(buf, 32, 64, b, identity=ident.to(torch.int32))


# ---- sizes and indices ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_cslt_bytes_overflow_is_refused(device):
    # m = 2**60 + 128, k = 16: the unchecked formula wraps to 4096 bytes, which this buffer has
    buf = torch.zeros(4096, dtype=torch.uint8, device=device)
    b = torch.zeros(16, 16, dtype=torch.bfloat16, device=device)
    with pytest.raises(ValueError, match=r"sp24.sparse24_cslt_mm: the GEMM-ready buffer of a \(1152921504606847104, "
                                         r"16\) 2:4 operand of 2-byte elements does not fit in int64 bytes"):
        _ops.cslt_mm(buf, 2**60 + 128, 16, b)
    with pytest.raises(ValueError, match=r"must be >= 0, got \(-16, 16\)"):
        _ops.cslt_mm(buf, -16, 16, b)


def test_cpu_compress_masks_indices():
    v, i = int_sparse(32, 64, torch.bfloat16, seed=14)
    bad = i.clone()
    bad[::3, ::5] |= 0x0C  # bits above the 2 that carry the index
    assert not torch.equal(bad, i)
    assert torch.equal(_ops.cslt_compress(v, bad), _ops.cslt_compress(v, i))
    b = int_dense(64, 16, torch.bfloat16, seed=15)
    assert_bits_equal(_ops.cslt_mm(_ops.cslt_compress(v, bad), 32, 64, b), _ops.mm(v, bad, b), "cslt_mm vs mm")


# ---- Sp24Tensor.packed() -------------------------------------------------------------------------
def test_packed_rebuilt_after_in_place_change():
    v, i = int_sparse(32, 64, torch.bfloat16, seed=16)
    a = sp24.Sp24Tensor(v, i)
    first = a.packed()
    assert a.packed() is first  # kept while unchanged
    a.values().mul_(2)
    second = a.packed()
    assert second is not first
    assert torch.equal(second, _ops.cslt_compress(v * 1, i))  # v itself was doubled in place
    a.indices()[0, :2] = torch.tensor([1, 3], dtype=torch.uint8)
    third = a.packed()
    assert torch.equal(third, _ops.cslt_compress(a.values(), a.indices()))
    assert not torch.equal(third, second)
    assert a._packed_identity().tolist()[2:6] == [1, 32, 64, 2]


def test_packed_given_at_construction_is_checked():
    v, i = int_sparse(32, 64, torch.bfloat16, seed=17)
    buf = _ops.cslt_compress(v, i)
    a = sp24.Sp24Tensor(v, i, packed=buf)
    assert a.packed() is buf
    v.add_(1)  # the values change: the given buffer is stale now
    assert torch.equal(a.packed(), _ops.cslt_compress(v, i))
    with pytest.raises(TypeError, match="packed must be the 1-D uint8"):
        sp24.Sp24Tensor(v, i, packed=buf.to(torch.int16))
    with pytest.raises(ValueError, match=r"packed must be on the values' device \(cpu\), got meta"):
        sp24.Sp24Tensor(v, i, packed=buf.to("meta"))


# ---- dense numerics under torch's precision flags ----------------------------------------------
class _Flags:
    """torch's matmul precision switches, through one API family at a time (torch refuses to read
    the legacy setting after the new one was used: "mix of the legacy and new APIs")."""

    def __init__(self, api: str):
        self.api = api
        cm = torch.backends.cuda.matmul
        self.saved_red = (cm.allow_fp16_reduced_precision_reduction, cm.allow_bf16_reduced_precision_reduction)
        self.saved = self._get()

    def _get(self):
        if self.api == "legacy":
            return torch.get_float32_matmul_precision()
        return (torch.backends.mkldnn.matmul.fp32_precision, torch.backends.cuda.matmul.fp32_precision)

    def _set(self, value):
        if self.api == "legacy":
            torch.set_float32_matmul_precision(value)
        else:
            torch.backends.mkldnn.matmul.fp32_precision, torch.backends.cuda.matmul.fp32_precision = value

    def loosen(self):
        self._set("medium" if self.api == "legacy" else ("bf16", "tf32"))
        cm = torch.backends.cuda.matmul
        cm.allow_fp16_reduced_precision_reduction = True
        cm.allow_bf16_reduced_precision_reduction = True

    def loose_now(self) -> bool:
        return self._get() == ("medium" if self.api == "legacy" else ("bf16", "tf32"))

    def strict(self, fn):
        """fn() under IEEE fp32 matmuls: the contract's bits."""
        before = self._get()
        try:
            self._set("highest" if self.api == "legacy" else ("ieee", "ieee"))
            return fn()
        finally:
            self._set(before)

    def restore(self):
        self._set(self.saved)
        cm = torch.backends.cuda.matmul
        cm.allow_fp16_reduced_precision_reduction, cm.allow_bf16_reduced_precision_reduction = self.saved_red


def _new_api_available() -> bool:
    return hasattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision") and \
        hasattr(torch.backends.cuda.matmul, "fp32_precision")


@pytest.fixture(params=["legacy", "new"])
def loose_precision_flags(request):
    """Every torch switch that may lower matmul precision, turned to its loosest; restored after."""
    if request.param == "new" and not _new_api_available():
        pytest.skip(f"torch {torch.__version__} has no per-backend fp32_precision switches")
    flags = _Flags(request.param)
    try:
        flags.loosen()
        yield flags
    finally:
        flags.restore()


def mm_fp64_sum(v, i, b, bias, out_dtype):
    """The CPU product under a reduced oneDNN fp32 precision (sparse24_ops.cpp, mm_fp32): exact
    products summed in fp64, rounded once to fp32, the bias added in fp32, rounded to out_dtype."""
    out = (reference.to_dense(v, i).double() @ b.double()).float()
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype or v.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("out_dtype", [None, torch.float32])
@pytest.mark.parametrize("with_bias", [False, True])
def test_cpu_mm_ignores_precision_flags(loose_precision_flags, dtype, out_dtype, with_bias):
    M, K, N = 64, 512, 96
    x = torch.randn(M, K, generator=gen(21)).to(dtype)
    v, i, _ = _ops.sparsify24(x)
    b = torch.randn(K, N, generator=gen(22)).to(dtype)
    bias = torch.randn(N, generator=gen(23)).to(dtype) if with_bias else None
    flags = loose_precision_flags
    strict = flags.strict(lambda: _ops.mm(v, i, b, bias, out_dtype))
    assert_bits_equal(strict, flags.strict(lambda: reference.mm(v, i, b, bias, out_dtype)), "sparse24_mm, IEEE flags")
    got = _ops.mm(v, i, b, bias, out_dtype)
    # no global flag is switched (another thread may read them): the product is summed in fp64
    assert_bits_equal(got, mm_fp64_sum(v, i, b, bias, out_dtype), "sparse24_mm under loose precision flags")
    assert flags.loose_now(), "the op must leave torch's flags as it found them"
    if dtype == torch.float32 and out_dtype is None:  # at least as exact as the fp32 GEMM
        exact = (reference.to_dense(v, i).double() @ b.double()) + (0 if bias is None else bias.double())
        assert (got.double() - exact).abs().max() <= (strict.double() - exact).abs().max()


def test_cpu_mm_under_default_flags_is_the_plain_fp32_gemm():
    """torch's default fp32 precision is "none" (inherit, i.e. IEEE), not "ieee": the reduced-precision
    branch of the dense path once tested "!= IEEE" and so summed every CPU GEMM in fp64 by default
    (2x the GEMM time, other bits than the fp32 GEMM). Run in a fresh interpreter so no other
    test's flag history (set_float32_matmul_precision turns "none" into "ieee") hides it."""
    import subprocess
    import sys
    code = (
        "import torch, sp24\n"
        "from sp24 import reference\n"
        "assert torch.backends.mkldnn.matmul.fp32_precision == 'none', torch.backends.mkldnn.matmul.fp32_precision\n"
        "g = torch.Generator().manual_seed(5)\n"
        "v, i, _ = torch.ops.sp24.sparsify24(torch.randn(64, 512, generator=g))\n"
        "b = torch.randn(512, 96, generator=g)\n"
        "bias = torch.randn(96, generator=g)\n"
        "d = reference.to_dense(v, i)\n"
        "got = torch.ops.sp24.sparse24_mm(v, i, b, None, None)\n"
        "assert torch.equal(got, torch.mm(d, b)), 'not the plain fp32 GEMM'\n"
        "assert not torch.equal(got, (d.double() @ b.double()).float()), 'the fp64 sum (inputs chosen to tell them apart)'\n"
        "got = torch.ops.sp24.sparse24_mm(v, i, b, bias, None)\n"
        "assert torch.equal(got, torch.mm(d, b).add_(bias)), 'bias'\n"
        "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


def test_precision_flags_stay_readable_from_another_thread_during_mm():
    """The op changes no process-wide state during the GEMM: were it to switch torch's fp32 precision
    flags, another thread reading torch.backends.cuda.matmul.allow_tf32 would raise ("mix of the
    legacy and new APIs")."""
    import threading

    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        v, i, _ = _ops.sparsify24(torch.randn(64, 256, generator=gen(26)))
        b = torch.randn(256, 64, generator=gen(27))
        stop, errors = [False], []

        def reader():
            while not stop[0]:
                try:
                    torch.backends.cuda.matmul.allow_tf32
                    torch.get_float32_matmul_precision()
                except RuntimeError as e:
                    errors.append(str(e))
                    return

        t = threading.Thread(target=reader)
        t.start()
        try:
            for _ in range(300):
                _ops.mm(v, i, b, None, torch.float32)
        finally:
            stop[0] = True
            t.join()
        assert not errors, errors[0]
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(saved)


def test_cpu_cslt_mm_ignores_precision_flags(loose_precision_flags):
    v, i = int_sparse(32, 64, torch.bfloat16, seed=24)
    v = v * 0.37  # not exactly representable products: rounding differences would show
    b = torch.randn(64, 16, generator=gen(25)).to(torch.bfloat16)
    assert_bits_equal(_ops.cslt_mm(_ops.cslt_compress(v, i), 32, 64, b), mm_fp64_sum(v, i, b, None, None),
                      "cslt_mm (CPU)")


# ---- CUDA build lane: linking, headers, versions (no GPU needed) ----------------------------------
def _extension_path() -> pathlib.Path:
    return pathlib.Path(_C.__file__)


@requires_cuda_build
def test_cusparselt_resolves_without_torch():
    # RUNPATH to the wheel's cuSPARSELt: the loader finds it with nothing preloaded by `import torch`
    so = _extension_path()
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD")}
    r = subprocess.run(["ldd", str(so)], capture_output=True, text=True, env=env, timeout=60)
    line = next((ln for ln in r.stdout.splitlines() if "libcusparseLt.so" in ln), "")
    assert line, f"{so} does not link libcusparseLt:\n{r.stdout}"
    m = re.search(r"=>\s*(\S+)", line)
    assert m and m.group(1) != "not" and os.path.exists(m.group(1)), f"libcusparseLt not resolved: {line.strip()}"
    assert "nvidia" in m.group(1), f"resolved outside the pip wheels: {m.group(1)}"
    r = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True, timeout=60)
    if r.returncode == 0:
        assert "$ORIGIN/../nvidia/cusparselt/lib" in r.stdout or "nvidia/cu13/lib" in r.stdout, r.stdout


def _compile_commands():
    root = pathlib.Path(sp24.__file__).resolve().parents[2]
    site = str(pathlib.Path(torch.__file__).resolve().parent.parent)
    # build/<venv name>/ (scripts/dev.sh); venv names start with a dot, which glob's * skips
    found = sorted((root / "build").glob("*/compile_commands.json")) + sorted((root / "build").glob(".*/compile_commands.json"))
    for path in found:
        cmds = json.load(open(path))
        if any(site in c.get("command", "") for c in cmds) and any(c["file"].endswith(".cu") for c in cmds):
            return path, cmds
    return None, None


@requires_cuda_build
def test_no_pip_cuda_include_dir_on_compile_lines():
    path, cmds = _compile_commands()
    if path is None:
        pytest.skip("no compile_commands.json of this environment's CUDA build under build/ (non-editable install)")
    for c in cmds:
        inc = re.findall(r"(?:-I|-isystem\s*|-idirafter\s*)(\S+)", c["command"])
        shadow = [d for d in inc if re.search(r"nvidia/cu\d+/include/?$", d)]
        assert not shadow, f"{c['file']}: pip's CUDA include folder on the compile line (shadows nvcc's): {shadow}"
        if c["file"].endswith((".cpp", ".cu")) and "cusparselt/include" in c["command"]:
            assert c["file"].endswith(("csrc/cusparselt/core.cpp", "csrc/cusparselt/cslt.cpp", "csrc/module.cpp",
                                       "bench/bench_gemm.cu")), \
                f"{c['file']}: cuSPARSELt's include folder is only for the sources that include cusparseLt.h"
    shim = pathlib.Path(path).parent / "generated" / "shim" / "cuda-libs"
    if shim.exists():
        allowed = {"cusparse.h", "cublas_v2.h", "cublas_api.h", "cublasLt.h", "cusolverDn.h", "cusolver_common.h"}
        assert {p.name for p in shim.iterdir()} <= allowed
        assert not (shim / "cuda_runtime.h").exists() and not (shim / "cuda_fp16.h").exists()


@requires_cuda_build
def test_cusparselt_versions_agree():
    v = _C.cslt_versions()
    assert v["header"] >= _C.cslt_version_code(0, 8, 0), f"sp24 needs cuSPARSELt >= 0.8, built against {v['header']}"
    assert v["runtime"] // 1000 == v["header"] // 1000, v
    assert v["mismatch"] == "", v["mismatch"]
    major, minor, patch = (int(p) for p in sp24.build_info()["cusparselt_version"].split("."))
    assert _C.cslt_version_code(major, minor, patch) == v["header"]


@requires_cuda_build
def test_only_not_supported_and_arch_mismatch_fall_back():
    assert _C.cslt_fallback_statuses() == ["CUSPARSE_STATUS_ARCH_MISMATCH", "CUSPARSE_STATUS_NOT_SUPPORTED"]


def test_cmake_states_the_minimum_cusparselt():
    text = (pathlib.Path(__file__).resolve().parents[1] / "third_party" / "cusparselt.cmake").read_text()
    assert re.search(r"VERSION_LESS 0\.8\)", text) and "needs cuSPARSELt >= 0.8" in text


# ---- GPU -----------------------------------------------------------------------------------------
@requires_cuda
@pytest.mark.gpu
def test_cuda_identity_refuses_a_cpu_buffer_moved_to_cuda():
    v, i, buf, b = _cpu_case()
    ident = _ops.cslt_identity("cpu", 32, 64, torch.bfloat16)
    with pytest.raises(ValueError, match=r"sp24's CPU packing, but this call needs a \(32, 64\) bfloat16 buffer in "
                                         r"cuSPARSELt \d+\.\d+\.\d+'s layout for sm_\d+"):
        _ops.cslt_mm(buf.cuda(), 32, 64, b.cuda(), identity=ident)
    a = sp24.Sp24Tensor(v.cuda(), i.cuda())
    assert_bits_equal(sp24.mm(a, b.cuda()), reference.mm(v, i, b), "sp24.mm with identity")


@requires_cuda
@pytest.mark.gpu
def test_sparse24_mm_cuda_fallback_ignores_precision_flags(loose_precision_flags):
    # out_dtype=float32 from bf16 takes the dense fallback; it must not run in TF32 / reduced precision
    M, K, N = 128, 1024, 64
    v, i, _ = _ops.sparsify24(torch.randn(M, K, generator=gen(31)).to(torch.bfloat16).cuda())
    b = torch.randn(K, N, generator=gen(32)).to(torch.bfloat16).cuda()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = _ops.mm(v, i, b, None, torch.float32)
        expected = loose_precision_flags.strict(lambda: _ops.mm(v, i, b, None, torch.float32))
    assert_bits_equal(got, expected, "CUDA dense fallback under loose flags")
    torch.testing.assert_close(got.cpu(), reference.mm(v.cpu(), i.cpu(), b.cpu(), None, torch.float32),
                               rtol=1e-5, atol=1e-4)


@requires_cuda
@pytest.mark.gpu
def test_fallback_warns_once_per_reason():
    code = r"""
import warnings, torch, sp24
from sp24 import _ops
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    for T in (64, 128, 192):   # one reason (out_dtype), three shapes
        v, i, _ = _ops.sparsify24(torch.randn(T, 128, device="cuda", dtype=torch.bfloat16))
        _ops.mm(v, i, torch.randn(128, 32, device="cuda", dtype=torch.bfloat16), None, torch.float32)
    v, i, _ = _ops.sparsify24(torch.randn(64, 40, device="cuda", dtype=torch.bfloat16))  # another reason
    _ops.mm(v, i, torch.randn(40, 32, device="cuda", dtype=torch.bfloat16))
msgs = [str(x.message) for x in w if "dense GEMM" in str(x.message)]
print(len(msgs)); print("\n".join(msgs))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "2", r.stdout
    assert "pairs torch.bfloat16 inputs only with a torch.bfloat16 output" in r.stdout
    assert "multiples of 16" in r.stdout


@requires_cuda
@pytest.mark.gpu
def test_search_outside_capture_and_verified():
    # SP24_CSLT_SEARCH=1: the first call inside a CUDA graph capture must not search (it would
    # synchronise and break the capture); the graph replays the default plan's result; the next
    # eager call searches (on synthetic operands) and gives the same bits on exact integers.
    code = r"""
import os, warnings, torch, sp24
from sp24 import _ops
torch.manual_seed(0)
M, K, N = 256, 512, 128
x = torch.randint(-2, 3, (M, K), device="cuda").to(torch.bfloat16)
v, i, _ = _ops.sparsify24(x, "largest_abs")
buf = _ops.cslt_compress(v, i)
b = torch.randint(-2, 3, (K, N), device="cuda").to(torch.bfloat16)
ref = (_ops.to_dense(v, i).float() @ b.float()).to(torch.bfloat16)
s = torch.cuda.Stream()
s.wait_stream(torch.cuda.current_stream())
g = torch.cuda.CUDAGraph()
with torch.cuda.stream(s):
    with torch.cuda.graph(g, stream=s):
        out = _ops.cslt_mm(buf, M, K, b)
g.replay(); torch.cuda.synchronize()
assert torch.equal(out, ref), "captured"
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    eager = _ops.cslt_mm(buf, M, K, b)
assert torch.equal(eager, ref), "searched"
print("OK", [str(x.message) for x in w])
"""
    env = dict(os.environ, SP24_CSLT_SEARCH="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr


def test_cslt_version_code_tells_every_version_apart():
    """cuSPARSELt's own encoding (major*1000 + minor*100 + patch) gives 1000 for 0.10.0 and 1.0.0:
    the code sp24 keeps in the buffer identity and the version check must not."""
    versions = [(0, 8, 0), (0, 8, 1), (0, 10, 0), (1, 0, 0), (0, 9, 100), (0, 10, 0), (1, 2, 3), (12, 345, 678)]
    codes = {v: _C.cslt_version_code(*v) for v in versions}
    assert codes[(0, 10, 0)] != codes[(1, 0, 0)] and codes[(0, 9, 100)] != codes[(1, 0, 0)]
    assert len(set(codes.values())) == len(set(versions))
    assert sorted(codes, key=codes.get) == sorted(set(versions))  # the code orders like the version
    for v, c in codes.items():
        assert _C.cslt_version_string(c) == ".".join(map(str, v))
    from sp24.bench.common import _ver
    assert _ver(codes[(0, 10, 0)]) == "0.10.0" and _ver(codes[(1, 0, 0)]) == "1.0.0" and _ver(-1) is None


def test_bench_metadata_records_the_cusparselt_versions():
    from sp24.bench.common import cusparselt_versions

    v = cusparselt_versions()
    assert set(v) >= {"loaded", "headers", "torch_reports", "ld_preload"}
    if CUDA_BUILD:
        c = _C.cslt_versions()
        assert v["headers"] == sp24.build_info()["cusparselt_version"]
        assert v["loaded"] == _C.cslt_version_string(c["runtime"])
    else:
        assert v["loaded"] is None and v["headers"] is None


# ---- what a search's result writes back (sp24/cslt_alg.h) ---------------------------------------
@pytest.mark.parametrize("found,written", [
    ((7, 1, 0, 0), (7, -1, -1, -1)),    # split-K 1: mode/buffers meaningless, writing 0 is INVALID_VALUE
    ((7, 1, 1, 1), (7, -1, -1, -1)),
    ((3, 4, 2, 3), (3, 4, 2, 3)),       # valid split-K: kept
    ((3, 4, 0, 0), (3, 4, -1, -1)),     # CUSPARSELT_INVALID_MODE, buffers outside [1, split_k - 1]
    ((3, 4, 1, 4), (3, 4, 1, -1)),
    ((5, -1, -1, -1), (5, -1, -1, -1)),
])
def test_search_result_writes_back_only_valid_split_k(found, written):
    assert _C.cslt_normalize_alg(*found) == written


# ---- sp24.mm's cached-buffer path (CUDA), driven on CPU by pretending the operand is GEMM-ready --
def _gemm_ready_operand(monkeypatch):
    monkeypatch.setattr(sp24.Sp24Tensor, "_gemm_ready", lambda self: True)
    v, i = int_sparse(32, 64, torch.bfloat16, seed=28)
    return sp24.Sp24Tensor(v, i), torch.randn(64, 16, generator=gen(29)).to(torch.bfloat16)


def test_mm_falls_back_when_cusparselt_refuses(monkeypatch):
    """Where cuSPARSELt refuses an operand or problem, sp24.mm falls back to the dense GEMM, as
    sparse24_mm does; any other error still raises."""
    s, b = _gemm_ready_operand(monkeypatch)

    def refuse(*args, **kwargs):
        raise ValueError("sp24.sparse24_cslt_mm: cuSPARSELt 0.8.0 cannot serve this problem: NOT_SUPPORTED; use "
                         "sp24.mm / sparse24_mm, which falls back to a dense GEMM")

    monkeypatch.setattr(sp24._ops, "cslt_mm", refuse)
    assert_bits_equal(sp24.mm(s, b), _ops.mm(s.values(), s.indices(), b, None, None), "sp24.mm after a refusal")

    def broken(*args, **kwargs):
        raise ValueError("sp24.sparse24_cslt_mm: the buffer's identity does not match")

    monkeypatch.setattr(sp24._ops, "cslt_mm", broken)
    with pytest.raises(ValueError, match="identity does not match"):
        sp24.mm(s, b)


def test_mm_under_compile_does_not_touch_the_cached_buffer(monkeypatch):
    """packed() makes the buffer's identity with a plain C++ call that dynamo cannot trace (fullgraph
    would fail) and that needs a real GPU under FakeTensorMode; so while compiling, sp24.mm takes
    sparse24_mm, which packs inside the op."""
    s, b = _gemm_ready_operand(monkeypatch)

    def no_packed(self):
        raise AssertionError("packed() called while compiling")

    monkeypatch.setattr(sp24.Sp24Tensor, "packed", no_packed)
    torch._dynamo.reset()
    f = torch.compile(lambda v, i, b: sp24.mm(sp24.Sp24Tensor(v, i, validate=False), b), fullgraph=True,
                      backend="aot_eager")
    assert_bits_equal(f(s.values(), s.indices(), b), _ops.mm(s.values(), s.indices(), b, None, None), "compiled sp24.mm")
