"""Golden cuSPARSELt compressed buffers vs the CPU side.

bench/capture_goldens.py (run by bench/gpu_check.sh on a GPU) writes `<case>.npz` files (plain
arrays: dense / values / indices as raw bits, the compressed bytes) and `cslt_goldens.json`; checked
into tests/data/ they let a machine without a GPU check what it can about cuSPARSELt's layout:

* the capture itself was sane (deterministic bytes, A @ I == A through cuSPARSELt);
* the buffer has sp24's advertised size and only zeros past what cuSPARSELt can have written;
* every kept value's bits occur in the buffer's values region (the layout of the first
  M*K/2 elements is a permutation of the kept values, which PyTorch's cuSPARSELt backend also
  assumes: torch/sparse/semi_structured.py);
* and that the candidate CPU emulation of the layout (`reference.cslt_layout`, from public reverse
  engineering, see its comment) reproduces the buffer byte for byte.

Without goldens, only the emulation's own consistency is checked here (a bijection, the vectorised
form against the scalar one); whether it IS cuSPARSELt's layout is for the goldens and the GPU test.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from sp24 import reference

DATA = os.path.join(os.path.dirname(__file__), "data")
MANIFEST = os.path.join(DATA, "cslt_goldens.json")

needs_goldens = pytest.mark.skipif(
    not os.path.exists(MANIFEST),
    reason="no golden cuSPARSELt buffers in tests/data (capture them on a GPU: "
           "python bench/capture_goldens.py --out tests/data, or bash bench/gpu_check.sh OUTDIR)")


def _cases():
    if not os.path.exists(MANIFEST):
        return []
    with open(MANIFEST) as f:
        return json.load(f)["cases"]


def _load(case):
    with np.load(os.path.join(DATA, case["file"]), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _sp24_bytes(M: int, K: int, elem: int) -> int:
    up = lambda v: -(-v // 128) * 128  # noqa: E731
    return M * K // 2 * elem + up(M) * up(K) // 8


@needs_goldens
@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["name"])
def test_golden_capture_is_sane(case):
    assert case["deterministic"], "two compressions of the same matrix gave different bytes"
    assert case["roundtrip_a_at_identity"], "cuSPARSELt's A @ I did not reproduce A"
    z = _load(case)
    M, K = case["M"], case["K"]
    assert z["values"].shape == (M, K // 2) and z["indices"].shape == (M, K // 2) and z["dense"].shape == (M, K)
    assert z["compressed"].dtype == np.uint8 and z["compressed"].shape == (_sp24_bytes(M, K, 2),)


@needs_goldens
@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["name"])
def test_golden_values_region_holds_the_kept_values(case):
    z = _load(case)
    M, K = case["M"], case["K"]
    region = z["compressed"][: M * K // 2 * 2].view(np.uint16)
    assert np.array_equal(np.sort(region), np.sort(z["values"].reshape(-1))), \
        "the first M*K/2 elements of the buffer are not a permutation of the kept values"


@needs_goldens
@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["name"])
def test_cpu_emulation_reproduces_golden(case):
    emulate = reference.cslt_layout
    z = _load(case)
    dtype = {"torch.bfloat16": torch.bfloat16, "torch.float16": torch.float16}[case["dtype"]]
    values = torch.from_numpy(z["values"].view(np.int16)).view(dtype)
    indices = torch.from_numpy(z["indices"])
    got = emulate(values, indices).numpy()
    assert np.array_equal(got, z["compressed"]), "emulated layout differs from the golden cuSPARSELt buffer"


# ---- the emulation's own consistency (no GPU, no goldens needed) ----------------------------------
_PAIRS = torch.tensor([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]], dtype=torch.uint8)


def _random_24(M, K, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    indices = _PAIRS[torch.randint(0, 6, (M, K // 4), generator=g)].reshape(M, K // 2)
    values = torch.randn(M, K // 2, generator=g).to(dtype)
    return values, indices


@pytest.mark.parametrize("M,K", [(64, 32), (128, 96), (192, 256), (16, 32), (80, 64)])
def test_cslt_meta_offset_is_a_bijection(M, K):
    slots = {reference.cslt_meta_offset(r, g, K) for r in range(-(-M // 64) * 64) for g in range(K // 4)}
    n = reference.cslt_meta_bytes(M, K)
    assert len(slots) == 2 * n  # every (row, group) has its own nibble
    assert slots == {(b, s) for b in range(n) for s in (0, 4)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M,K", [(64, 32), (128, 96), (192, 256), (16, 32), (80, 64)])
def test_cslt_layout_matches_its_scalar_form(M, K, dtype):
    values, indices = _random_24(M, K, dtype, seed=M * 1000 + K)
    got = reference.cslt_layout(values, indices)
    nv = M * K // 2 * 2
    assert got.numel() == _sp24_bytes(M, K, 2)
    assert torch.equal(got[:nv], values.view(torch.uint8).reshape(-1))
    want = torch.zeros(reference.cslt_meta_bytes(M, K), dtype=torch.uint8)
    idx = indices.to(torch.int32)
    for r in range(M):
        for g in range(K // 4):
            off, shift = reference.cslt_meta_offset(r, g, K)
            want[off] |= int(idx[r, 2 * g] | (idx[r, 2 * g + 1] << 2)) << shift
    assert torch.equal(got[nv:nv + want.numel()], want)
    assert not got[nv + want.numel():].any()


def test_cslt_layout_rejects_what_it_does_not_model():
    v, i = _random_24(64, 32, torch.bfloat16, 0)
    with pytest.raises(ValueError, match="16-bit"):
        reference.cslt_layout(v.float(), i)
    v, i = _random_24(64, 48, torch.bfloat16, 0)
    with pytest.raises(ValueError, match="K must be a multiple of 32, got K=48"):
        reference.cslt_layout(v, i)


@pytest.mark.parametrize("M,K", [(64, 32), (128, 96), (192, 256)])
def test_direct_writer_metadata_matches_the_emulation(M, K):
    """csrc/sp24/cslt_layout.h (what the CUDA direct writer runs per byte), run on the host, gives
    the emulation's metadata: two independent statements of one layout."""
    from sp24 import _C
    values, indices = _random_24(M, K, torch.bfloat16, seed=7 + M)
    meta = _C.cslt_meta_host(indices.contiguous().numpy().tobytes(), M, K)
    nv = M * K // 2 * 2
    want = reference.cslt_layout(values, indices)[nv:nv + M * K // 8]
    assert torch.equal(torch.frombuffer(bytearray(meta), dtype=torch.uint8), want)
    with pytest.raises(ValueError, match="M % 64 == 0"):
        _C.cslt_meta_host(b"\0" * 16, 16, 32)
