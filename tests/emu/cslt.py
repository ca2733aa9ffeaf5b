"""ctypes front end of sp24's cuSPARSELt core linked against the contract test double of the
cuSPARSELt API (csrc/cusparselt/core.cpp + csrc/emu/cusparselt/ + csrc/emu/cslt_capi.cpp, built with
ASan + UBSan by scripts/emu.sh). Each call runs the call sequence the torch glue runs for the same
request; the double enforces cuSPARSELt's documented rules and computes on host memory.
"""

from __future__ import annotations

import ctypes
import os
from typing import Optional

import torch

LIB_ENV = "SP24_CSLT_LIB"
TYPE_CODE = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.float8_e4m3fn: 3}
DONE, ERROR, REFUSED = 0, 1, 2

_lib: Optional[ctypes.CDLL] = None


class Refused(Exception):
    """cuSPARSELt cannot serve the request: the glue falls back to its dense GEMM."""


class CsltError(Exception):
    """A failed cuSPARSELt call that the glue raises."""


def available() -> bool:
    return bool(os.environ.get(LIB_ENV))


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        _lib = ctypes.CDLL(os.environ[LIB_ENV])
        _lib.sp24dbl_last_violation.restype = ctypes.c_char_p
        _lib.sp24dbl_call_log.restype = ctypes.c_char_p
        _lib.sp24cslt_cached_plans.restype = ctypes.c_int64
    return _lib


def _i(v: int):
    return ctypes.c_int64(int(v))


def _p(t: Optional[torch.Tensor]):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _check(rc: int, err) -> None:
    if rc == REFUSED:
        raise Refused(err.value.decode())
    if rc != DONE:
        raise CsltError(err.value.decode())


def sp24_bytes(M: int, K: int, dtype: torch.dtype) -> int:
    """sp24's buffer size for a dense (M, K) 2:4 matrix (csrc/sp24/cslt_layout.h, cslt_bytes)."""
    return int(torch.ops.sp24.sparse24_cslt_compress(torch.zeros(M, K // 2, dtype=dtype),
                                                     torch.zeros(M, K // 2, dtype=torch.uint8)).numel())


def compress(a: torch.Tensor, *, device: int = 0, sp24_size: bool = False) -> torch.Tensor:
    """The compressed buffer of the dense 2:4 matrix a (M, K), as try_compress makes it."""
    assert a.dim() == 2 and a.is_contiguous()
    M, K = a.shape
    want = sp24_bytes(M, K, a.dtype) if sp24_size else 0
    cap = max(want, 4 * a.numel() * a.element_size() + 4096)
    out = torch.zeros(cap, dtype=torch.uint8)
    n = ctypes.c_int64(0)
    err = ctypes.create_string_buffer(2048)
    rc = lib().sp24cslt_compress(device, TYPE_CODE[a.dtype], _i(M), _i(K), _p(a), int(sp24_size), _i(want), _p(out),
                                 _i(cap), ctypes.byref(n), err, _i(len(err)))
    _check(rc, err)
    return out[: n.value].clone()


def mm(a_buf: torch.Tensor, M: int, K: int, b: torch.Tensor, *, c: Optional[torch.Tensor] = None,
       out_dtype: Optional[torch.dtype] = None, transpose: bool = False, search: bool = False, device: int = 0,
       on_thread: bool = False) -> torch.Tensor:
    """A (M, K) @ b (+ c) through the core, A given by its compressed buffer, b with its own strides
    (the glue passes b as is, or copies it). c: the bias already expanded to D's shape and layout."""
    N = b.shape[1]
    odt = out_dtype or b.dtype
    d = torch.empty((N, M) if transpose else (M, N), dtype=odt)
    err = ctypes.create_string_buffer(2048)
    fn = lib().sp24cslt_mm_on_thread if on_thread else lib().sp24cslt_mm
    rc = fn(device, TYPE_CODE[b.dtype], TYPE_CODE[odt], _i(M), _i(K), _i(N), _p(a_buf), _p(b), _i(b.stride(0)),
            _i(b.stride(1)), _p(c), int(transpose), int(search), _p(d), err, _i(len(err)))
    _check(rc, err)
    return d


def fp8_mm(a_dense: torch.Tensor, w: torch.Tensor, alpha: torch.Tensor, *, c: Optional[torch.Tensor] = None,
           out_dtype: torch.dtype = torch.bfloat16, device: int = 0) -> torch.Tensor:
    """D (M, N) = alpha[:, None] * (A @ w.T) (+ c) through the core's FP8 sequence (try_fp8_mm): A the
    dense 2:4 e4m3 (M, K), w the row-major (N, K) e4m3 matrix (b = w.T, K-major), alpha (M,) fp32."""
    assert a_dense.dtype == torch.float8_e4m3fn and w.dtype == torch.float8_e4m3fn and a_dense.is_contiguous()
    assert w.stride(1) == 1 and w.stride(0) == w.shape[1] and alpha.dtype == torch.float32
    M, K = a_dense.shape
    N = w.shape[0]
    d = torch.empty(M, N, dtype=out_dtype)
    err = ctypes.create_string_buffer(2048)
    rc = lib().sp24cslt_fp8_mm(device, TYPE_CODE[out_dtype], _i(M), _i(K), _i(N), _p(a_dense), _p(w), _p(alpha), _p(c),
                               _p(d), err, _i(len(err)))
    _check(rc, err)
    return d


def expand_bias(bias: torch.Tensor, M: int, out_dtype: torch.dtype, transpose: bool) -> torch.Tensor:
    """The glue's C for a bias (N,): bias broadcast to D's shape, contiguous, in the output dtype."""
    bv = bias.to(out_dtype)
    N = bv.numel()
    return (bv.view(N, 1).expand(N, M) if transpose else bv.view(1, N).expand(M, N)).contiguous()


def static_refusal(M: int, K: int, N: int, ab: torch.dtype, out: torch.dtype) -> str:
    err = ctypes.create_string_buffer(1024)
    lib().sp24cslt_static_refusal(_i(M), _i(K), _i(N), TYPE_CODE[ab], TYPE_CODE[out], err, _i(len(err)))
    return err.value.decode()


def versions():
    h, r = ctypes.c_int(0), ctypes.c_int(0)
    err = ctypes.create_string_buffer(1024)
    lib().sp24cslt_versions(ctypes.byref(h), ctypes.byref(r), err, _i(len(err)))
    return h.value, r.value, err.value.decode()


def cached_plans() -> int:
    return int(lib().sp24cslt_cached_plans())


# ---- the double's control API (csrc/emu/cusparselt/control.h) ----------------------------------
def set_arch(sm: int) -> None:
    lib().sp24dbl_set_arch(int(sm))


def live_objects() -> int:
    return int(lib().sp24dbl_live_objects())


def violations() -> int:
    return int(lib().sp24dbl_violations())


def last_violation() -> str:
    return (lib().sp24dbl_last_violation() or b"").decode()


def call_log() -> list:
    return [ln for ln in (lib().sp24dbl_call_log() or b"").decode().splitlines() if ln]


def fail_next(function: str, status: int) -> None:
    lib().sp24dbl_fail_next(function.encode(), int(status))
