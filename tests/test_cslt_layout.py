"""Golden cuSPARSELt compressed buffers vs the CPU side (issue #3).

bench/capture_goldens.py (run by bench/gpu_check.sh on a GPU) writes `<case>.npz` files (plain
arrays: dense / values / indices as raw bits, the compressed bytes) and `cslt_goldens.json`; checked
into tests/data/ they let a machine without a GPU check what it can about cuSPARSELt's layout:

* the capture itself was sane (deterministic bytes, A @ I == A through cuSPARSELt);
* the buffer has sp24's advertised size and only zeros past what cuSPARSELt can have written;
* every kept value's bits occur in the buffer's values region (the layout of the first
  M*K/2 elements is a permutation of the kept values, which PyTorch's cuSPARSELt backend also
  assumes: torch/sparse/semi_structured.py);
* and, once written, that the CPU emulation of the layout (`reference.cslt_layout`) reproduces the
  buffer byte for byte. No emulation is claimed before goldens exist to check it against.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from sp24 import reference

DATA = os.path.join(os.path.dirname(__file__), "data")
MANIFEST = os.path.join(DATA, "cslt_goldens.json")

pytestmark = pytest.mark.skipif(
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


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["name"])
def test_golden_capture_is_sane(case):
    assert case["deterministic"], "two compressions of the same matrix gave different bytes"
    assert case["roundtrip_a_at_identity"], "cuSPARSELt's A @ I did not reproduce A"
    z = _load(case)
    M, K = case["M"], case["K"]
    assert z["values"].shape == (M, K // 2) and z["indices"].shape == (M, K // 2) and z["dense"].shape == (M, K)
    assert z["compressed"].dtype == np.uint8 and z["compressed"].shape == (_sp24_bytes(M, K, 2),)


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["name"])
def test_golden_values_region_holds_the_kept_values(case):
    z = _load(case)
    M, K = case["M"], case["K"]
    region = z["compressed"][: M * K // 2 * 2].view(np.uint16)
    assert np.array_equal(np.sort(region), np.sort(z["values"].reshape(-1))), \
        "the first M*K/2 elements of the buffer are not a permutation of the kept values"


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["name"])
def test_cpu_emulation_reproduces_golden(case):
    emulate = getattr(reference, "cslt_layout", None)
    if emulate is None:
        pytest.skip("no CPU emulation of cuSPARSELt's layout yet (sp24.reference.cslt_layout): derive it from "
                    "these goldens, then this test checks it byte for byte")
    import torch
    z = _load(case)
    dtype = {"torch.bfloat16": torch.bfloat16, "torch.float16": torch.float16}[case["dtype"]]
    values = torch.from_numpy(z["values"].view(np.int16)).view(dtype)
    indices = torch.from_numpy(z["indices"])
    got = emulate(values, indices).numpy()
    assert np.array_equal(got, z["compressed"]), "emulated layout differs from the golden cuSPARSELt buffer"
