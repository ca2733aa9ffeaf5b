"""ctypes front end of the emulated CUDA kernels (csrc/cuda/*.cu compiled as host C++ against
csrc/emu/cuda_emu.h, with ASan + UBSan, by scripts/emu.sh). Each function takes CPU tensors, runs
the CUDA kernel of the op in emulation into freshly poisoned, exactly sized outputs, and returns them.
"""

from __future__ import annotations

import ctypes
import os
from typing import Optional

import torch

LIB_ENV = "SP24_EMU_LIB"
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
ALGO_CODE = {"largest": 0, "largest_abs": 1}
POISON = 0xA5  # every output byte starts as 0xA5: a byte the kernel does not write cannot pass

_lib: Optional[ctypes.CDLL] = None


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        path = os.environ[LIB_ENV]
        _lib = ctypes.CDLL(path)
        _lib.sp24emu_sparsify24_vectorised.restype = ctypes.c_int
    return _lib


def _p(t: Optional[torch.Tensor]):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _i(v: int):
    return ctypes.c_int64(int(v))


def poisoned(shape, dtype) -> torch.Tensor:
    t = torch.empty(shape, dtype=dtype)
    if t.numel():
        t.view(torch.uint8).fill_(POISON)
    return t


def _call(fn, *args) -> None:
    err = ctypes.create_string_buffer(1024)
    rc = fn(*args, err, _i(len(err)))
    if rc != 0:
        raise RuntimeError(err.value.decode())


def _check_rows(x: torch.Tensor) -> None:
    assert x.dim() == 2 and (x.stride(1) == 1 or x.size(1) <= 1), (tuple(x.shape), x.stride())


def sparsify24(x: torch.Tensor, algo: str, relu2: bool, with_counts: bool, cslt: bool = False):
    """(values, indices, counts, meta): meta is the fused cuSPARSELt metadata region (M*K/8 bytes)."""
    _check_rows(x)
    M, K = x.shape
    values, indices = poisoned((M, K // 2), x.dtype), poisoned((M, K // 2), torch.uint8)
    counts = torch.zeros(K, dtype=torch.int32) if with_counts else torch.empty(0, dtype=torch.int32)
    meta = poisoned((M * K // 8,), torch.uint8) if cslt else None
    _call(lib().sp24emu_sparsify24, _p(x), _i(x.stride(0)), _p(values), _p(indices),
          _p(counts) if with_counts else None, _i(M), _i(K), ALGO_CODE[algo], int(relu2), DTYPE_CODE[x.dtype],
          _p(meta))
    return values, indices, counts, meta


def vectorised(x: torch.Tensor) -> bool:
    M, K = x.shape
    return bool(lib().sp24emu_sparsify24_vectorised(_p(x), _i(x.stride(0)), _i(M), _i(K), DTYPE_CODE[x.dtype]))


def sparsify24_transposed(x: torch.Tensor, algo: str, columns: Optional[torch.Tensor]):
    _check_rows(x)
    T, N = x.shape
    C = N if columns is None else columns.numel()
    values, indices = poisoned((C, T // 2), x.dtype), poisoned((C, T // 2), torch.uint8)
    ws = poisoned((N,), torch.int32) if columns is not None else None
    _call(lib().sp24emu_sparsify24_transposed, _p(x), _i(x.stride(0)), _p(columns), _p(values), _p(indices), _i(T),
          _i(N), _i(C), ALGO_CODE[algo], DTYPE_CODE[x.dtype], _p(ws))
    return values, indices


def transposed_split(values: torch.Tensor, indices: torch.Tensor, sparse_cols: torch.Tensor,
                     dense_cols: torch.Tensor, algo: str):
    T, H = values.shape
    F = 2 * H
    Cs, Cd = sparse_cols.numel(), dense_cols.numel()
    tv, ti = poisoned((Cs, T // 2), values.dtype), poisoned((Cs, T // 2), torch.uint8)
    dt = poisoned((Cd, T), values.dtype)
    ws = poisoned((2 * F,), torch.int32)
    _call(lib().sp24emu_transposed_split, _p(values), _p(indices), _p(sparse_cols), _p(dense_cols), _p(tv), _p(ti),
          _p(dt), _i(T), _i(F), _i(Cs), _i(Cd), ALGO_CODE[algo], DTYPE_CODE[values.dtype], _p(ws))
    return tv, ti, dt


def apply(x: torch.Tensor, indices: torch.Tensor, y2_values: Optional[torch.Tensor] = None) -> torch.Tensor:
    _check_rows(x)
    M, K = x.shape
    out = poisoned((M, K // 2), x.dtype)
    _call(lib().sp24emu_apply, _p(x), _i(x.stride(0)), _p(y2_values), _p(indices), _p(out), _i(M), _i(K),
          DTYPE_CODE[x.dtype])
    return out


def to_dense(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    M, H = values.shape
    out = poisoned((M, 2 * H), values.dtype)
    _call(lib().sp24emu_to_dense, _p(values), _p(indices), _p(out), _i(M), _i(2 * H), DTYPE_CODE[values.dtype])
    return out


def quantize_rows(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The CUDA row quantisation kernel (sparsify24_fp8's second step): (q (M, n) e4m3, scales (M,))."""
    M, n = values.shape
    values = values.contiguous()
    q, scales = poisoned((M, n), torch.uint8), poisoned((M,), torch.float32)
    _call(lib().sp24emu_quantize_rows, _p(values), _p(q), _p(scales), _i(M), _i(n),
          DTYPE_CODE[values.dtype])
    return q.view(torch.float8_e4m3fn), scales


def sparsify24_fp8_fused(x: torch.Tensor, algo: str, relu2: bool, max_blocks: int = 65535):
    """The one-kernel CUDA sparsify24_fp8 (no counts): (q (M, K/2) e4m3, indices, scales (M,)), or None
    where the glue takes the two-kernel chain instead (a row's kept values past the kernel's 32 KiB).
    max_blocks caps the grid (one block per row otherwise), so that blocks go round the row loop."""
    _check_rows(x)
    M, K = x.shape
    q, indices, scales = poisoned((M, K // 2), torch.uint8), poisoned((M, K // 2), torch.uint8), poisoned((M,), torch.float32)
    err = ctypes.create_string_buffer(1024)
    rc = lib().sp24emu_sparsify24_fp8_fused(_p(x), _i(x.stride(0)), _p(q), _p(indices), _p(scales), _i(M), _i(K),
                                            ALGO_CODE[algo], int(relu2), DTYPE_CODE[x.dtype], _i(max_blocks), err,
                                            _i(len(err)))
    if rc == 2:
        return None
    if rc != 0:
        raise RuntimeError(err.value.decode())
    return q.view(torch.float8_e4m3fn), indices, scales


def cslt_meta(indices: torch.Tensor) -> torch.Tensor:
    M, H = indices.shape
    meta = poisoned((M * 2 * H // 8,), torch.uint8)
    _call(lib().sp24emu_cslt_meta, _p(indices), _p(meta), _i(M), _i(2 * H))
    return meta


STAT_NAMES = ("launches", "blocks", "threads", "barrier releases", "warp-shuffle releases", "pool threads",
              "refused launches")


def stats() -> dict:
    out = (ctypes.c_int64 * 7)()
    lib().sp24emu_stats(out)
    return dict(zip(STAT_NAMES, list(out)))
