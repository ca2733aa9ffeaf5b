"""Capture small golden cuSPARSELt compressed buffers on a GPU, for tests/test_cslt_layout.py.

For a few small 2:4 matrices whose kept values are all distinct (so every byte of the compressed
buffer can be traced back to a position), writes, per case, `<name>.npz` holding plain arrays
(no pickles: np.savez with object-free arrays, read back with allow_pickle=False):

    dense       (M, K)  the dense 2:4 matrix, as raw bits (uint16)
    values      (M, K/2) kept values, raw bits (uint16)      } sp24's canonical format
    indices     (M, K/2) uint8 positions 0..3                }
    compressed  (bytes,) uint8, torch.ops.sp24.sparse24_cslt_compress on the GPU

and one `cslt_goldens.json` describing them (shapes, dtypes, cuSPARSELt/torch/GPU versions, and
whether a second compression gave identical bytes). tests/test_cslt_layout.py compares these with
the CPU emulation of the layout; copy the files into tests/data/ to check them in.

    python bench/capture_goldens.py --out tests/data
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

CASES = [  # (name, M, K, dtype)
    ("bf16_16x32", 16, 32, torch.bfloat16),
    ("fp16_16x32", 16, 32, torch.float16),
    ("bf16_32x64", 32, 64, torch.bfloat16),
    ("bf16_64x128", 64, 128, torch.bfloat16),
    ("bf16_48x96", 48, 96, torch.bfloat16),
    # whole 64-row bands, one and several 32-column chunks: the domain reference.cslt_layout models
    ("bf16_64x32", 64, 32, torch.bfloat16),
    ("fp16_128x96", 128, 96, torch.float16),
    ("bf16_192x128", 192, 128, torch.bfloat16),
]


def distinct_2to4(M: int, K: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical (values, indices) with a seeded 2:4 pattern and all kept values distinct: kept
    value number n (row-major) has the bits of 1.0 plus n ulps (finite for n < 16000)."""
    g = torch.Generator().manual_seed(seed)
    pairs = torch.tensor([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]], dtype=torch.uint8)
    pick = torch.randint(0, 6, (M, K // 4), generator=g)
    indices = pairs[pick].reshape(M, K // 2)
    one = 0x3F80 if dtype == torch.bfloat16 else 0x3C00
    n = torch.arange(M * K // 2, dtype=torch.int32).reshape(M, K // 2)
    values = (n + one).to(torch.int16).view(dtype)
    return values, indices


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder (e.g. tests/data)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("capture_goldens: no CUDA device; goldens can only be captured on a GPU", file=sys.stderr)
        return 2
    import sp24
    from sp24 import _ops, reference

    os.makedirs(args.out, exist_ok=True)
    info = sp24.build_info()
    manifest = {
        "what": "cuSPARSELt compressed buffers of row-major 2:4 A (M, K), op N, made by sparse24_cslt_compress",
        "cusparselt_version": info.get("cusparselt_version"),
        "cusparselt_runtime_version": info.get("cusparselt_runtime_version"),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(),
        "cases": [],
    }
    for k, (name, M, K, dtype) in enumerate(CASES):
        values, indices = distinct_2to4(M, K, dtype, seed=1000 + k)
        dense = reference.to_dense(values, indices)
        buf = _ops.cslt_compress(values.cuda(), indices.cuda())
        buf2 = _ops.cslt_compress(values.cuda(), indices.cuda())
        torch.cuda.synchronize()
        # The buffer must at least decompress correctly through cuSPARSELt: A @ I == A.
        eye = torch.eye(K, dtype=dtype, device="cuda")
        back = _ops.cslt_mm(buf, M, K, eye)
        roundtrip = bool(torch.equal(back.cpu().view(torch.int16), dense.view(torch.int16)))
        np.savez(os.path.join(args.out, f"{name}.npz"),
                 dense=dense.view(torch.int16).numpy().view(np.uint16),
                 values=values.view(torch.int16).numpy().view(np.uint16),
                 indices=indices.numpy(),
                 compressed=buf.cpu().numpy())
        emulated = bool(torch.equal(buf.cpu(), reference.cslt_layout(values, indices)))
        manifest["cases"].append({"name": name, "file": f"{name}.npz", "M": M, "K": K, "dtype": str(dtype),
                                  "bytes": int(buf.numel()), "deterministic": bool(torch.equal(buf, buf2)),
                                  "roundtrip_a_at_identity": roundtrip, "cpu_emulation_matches": emulated})
        print(f"{name}: {buf.numel()} bytes, deterministic={torch.equal(buf, buf2)}, A@I==A: {roundtrip}, "
              f"reference.cslt_layout reproduces it: {emulated}")
    with open(os.path.join(args.out, "cslt_goldens.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    bad = [c["name"] for c in manifest["cases"] if not (c["deterministic"] and c["roundtrip_a_at_identity"])]
    if bad:
        print(f"capture_goldens: suspicious cases: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
