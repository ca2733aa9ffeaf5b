"""Proof that the emulation lane bites: plant one known bug into a temporary copy of csrc/, build
that copy as the emulation libraries, run the lane on it, and require it to FAIL. The checkout is
never modified (the copy lives in a temporary folder; the libraries go to build/emu-plant-NAME).
The plants cover the CUDA kernels (run under the host emulation) and the cuSPARSELt core (run
against the contract test double of the cuSPARSELt API).

    python scripts/emu_plant.py PYTHON [NAME ...]      (default: every plant; via scripts/dev.sh:
                                                       bash scripts/dev.sh emu-plant [NAME ...])

Exit status 0 iff every requested plant made the lane fail; the abridged failure of each is printed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CU = "csrc/cuda/sparse24_cuda.cu"
CORE = "csrc/cusparselt/core.cpp"

# name: (what it plants, file, exact text, replacement, pytest -k selection that should catch it)
PLANTS = {
    "misaligned-vector": (
        "sparsify24_transposed: the 16-byte loads no longer require a 16-byte aligned x", CU,
        "const bool vec_load = p.N % E == 0 && aligned16(p.x) &&",
        "const bool vec_load = p.N % E == 0 &&",
        "test_sparsify24_transposed and 64",
    ),
    "shuffle-partner": (
        "fused cuSPARSELt writer: lane ^ 1 instead of lane ^ 2 as the partner of the metadata exchange", CU,
        "__shfl_xor_sync(0xffffffffu, b0 | (b1 << 8), 2)",
        "__shfl_xor_sync(0xffffffffu, b0 | (b1 << 8), 1)",
        "test_cslt_writers",
    ),
    "missing-syncthreads": (
        "sparsify24_transposed: no barrier between filling the shared tile and reading it", CU,
        "  __syncthreads();\n\n  // Compute + store: thread = one x column",
        "\n\n  // Compute + store: thread = one x column",
        "test_sparsify24_transposed",
    ),
    "missing-syncthreads-counts": (
        "sparsify24 rows: no barrier between the per-thread counts in shared memory and their reduction", CU,
        "s_counts[ty][tx * kRowElems + e] = cnt[e];\n  __syncthreads();",
        "s_counts[ty][tx * kRowElems + e] = cnt[e];",
        "test_sparsify24_rows",
    ),
    "partial-tile-off-by-one": (
        "sparsify24 rows: the last column tile takes a second group when only one is left (>= -> >)", CU,
        "(c0 + 4 >= p.K ? 1 : 2)",
        "(c0 + 4 > p.K ? 1 : 2)",
        "test_sparsify24_rows",
    ),
    "cslt-leading-dimension": (
        "cuSPARSELt core: matrix A's leading dimension K / 2 instead of K", CORE,
        "cusparseLtStructuredDescriptorInit(h, &p->a, k.M, k.K, k.K, kAlign",
        "cusparseLtStructuredDescriptorInit(h, &p->a, k.M, k.K, k.K / 2, kAlign",
        "test_cslt_contract",
    ),
    "cslt-misaligned-pointer": (
        "cuSPARSELt core: a row-major b is passed as is without a 16-byte aligned pointer", CORE,
        "if (s1 == 1 && s0 >= N && s0 % 8 == 0 && aligned)",
        "if (s1 == 1 && s0 >= N && s0 % 8 == 0)",
        "test_cslt_contract",
    ),
    "cslt-type-combination": (
        "cuSPARSELt core: compute type 16F (not in cuSPARSELt's table for bf16 inputs)", CORE,
        "&p->a, &p->b, &p->c, &p->c, CUSPARSE_COMPUTE_32F",
        "&p->a, &p->b, &p->c, &p->c, CUSPARSE_COMPUTE_16F",
        "test_cslt_contract",
    ),
    "cslt-split-k-out-of-range": (
        "split-K write-back: the searched attributes are written back as read, without normalize_cslt_alg", CORE,
        "const CsltAlg n = normalize_cslt_alg({c.id, c.split_k, c.split_k_mode, c.split_k_buffers});",
        "const CsltAlg n{c.id, c.split_k, c.split_k_mode, c.split_k_buffers};",
        "test_cslt_contract",
    ),
    "cslt-call-before-init": (
        "cuSPARSELt core: the handle is used without cusparseLtInit", CORE,
        "const cusparseStatus_t s = cusparseLtInit(h.get());",
        "const cusparseStatus_t s = CUSPARSE_STATUS_SUCCESS;",
        "test_cslt_contract",
    ),
    "cslt-plan-leak": (
        "cuSPARSELt core: a cached plan is never destroyed", CORE,
        "  if (!alive) return;\n  cusparseLtMatmulPlanDestroy(&plan);",
        "  return;\n  cusparseLtMatmulPlanDestroy(&plan);",
        "test_cslt_contract",
    ),
    "fp8-row-reduction": (
        "FP8 row quantisation: the warp's amax reduction starts at lane distance 8 (lanes 16 apart never meet)", CU,
        "for (int o = 16; o > 0; o >>= 1) st.merge(",
        "for (int o = 8; o > 0; o >>= 1) st.merge(",
        "test_quantize_rows_e4m3 or test_sparsify24_fp8_fused",
    ),
    "fp8-fused-amax-barrier": (
        "fused FP8 sparsify: the row's amax read from shared memory without the barrier after the warps wrote it",
        CU,
        "    __syncthreads();  // the kept values and the warps' amax are in shared memory\n",
        "",
        "test_sparsify24_fp8_fused",
    ),
    "fp8-fused-row-reuse": (
        "fused FP8 sparsify: no barrier before the next row rewrites the shared kept values",
        CU,
        "    __syncthreads();  // the next row rewrites s_kept and s_amax\n",
        "",
        "test_sparsify24_fp8_fused",
    ),
    "cslt-fp8-b-not-k-major": (
        "cuSPARSELt core, FP8: B passed as the row-major (K, N) matrix (8-bit operands must both be K-major)", CORE,
        "  k.b_col_major = true;  // B (K, N) K-major",
        "  k.b_col_major = false;  // B (K, N) K-major",
        "test_cslt_fp8",
    ),
    "cslt-fp8-no-beta-vector": (
        "cuSPARSELt core, FP8: C given without BETA_VECTOR_SCALING (cuSPARSELt then ignores beta and C: no bias)",
        CORE,
        "    if (s.ok() && k.with_c) {",
        "    if (s.ok() && false) {",
        "test_cslt_fp8",
    ),
}

KEY = re.compile(r"runtime error|ERROR: AddressSanitizer|SUMMARY: |AssertionError|sp24 CUDA emulation:|^FAILED|"
                 r"passed|failed|READ of size|WRITE of size|    #[0-3] ")


def plant(py: str, name: str) -> bool:
    what, rel, old, new, select = PLANTS[name]
    tmp = tempfile.mkdtemp(prefix=f"sp24-plant-{name}-")
    try:
        shutil.copytree(os.path.join(ROOT, "csrc"), os.path.join(tmp, "csrc"))
        path = os.path.join(tmp, rel)
        src = open(path).read()
        n = src.count(old)
        if n != 1:
            print(f"[{name}] cannot plant: the text to replace occurs {n} times in {rel} (the source changed; "
                  "update PLANTS in scripts/emu_plant.py)")
            return False
        open(path, "w").write(src.replace(old, new))
        env = dict(os.environ, SP24_EMU_SRC=tmp, SP24_EMU_OUT=f"build/emu-plant-{name}")
        t0 = time.time()
        r = subprocess.run(["bash", "scripts/emu.sh", py, "-x", "-k", select], cwd=ROOT, env=env,
                           capture_output=True, text=True)
        out = r.stdout + r.stderr
        lines = [ln for ln in out.splitlines() if KEY.search(ln)]
        print(f"[{name}] planted: {what}")
        print("\n".join("    " + ln[:240] for ln in lines[:14]))
        caught = r.returncode != 0
        print(f"[{name}] lane exit status {r.returncode} after {time.time() - t0:.0f} s: "
              f"{'CAUGHT' if caught else 'NOT CAUGHT'}\n")
        return caught
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    py = sys.argv[1]
    names = sys.argv[2:] or list(PLANTS)
    unknown = [n for n in names if n not in PLANTS]
    if unknown:
        print(f"unknown plant(s) {unknown}; known: {list(PLANTS)}")
        return 2
    results = {n: plant(py, n) for n in names}
    missed = [n for n, ok in results.items() if not ok]
    print(f"plants caught: {len(names) - len(missed)} of {len(names)}" + (f"; NOT caught: {missed}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
