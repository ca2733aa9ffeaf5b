// cuSPARSELt wrapper: 2:4 sparse (M, K) @ dense (K, N) on CUDA with fp32 accumulation.
//
// This is glue (it allocates through torch's caching allocator and runs on torch's current stream),
// so it takes at::Tensor; the 2:4 kernels themselves live in csrc/cuda.
//
//   handles   one cusparseLtHandle_t per (thread, device): autograd's backward runs on another
//             thread, and a handle is tied to the device that was current when it was created.
//   plans     cached per thread, keyed by every input of the plan (device, M, K, N, dtypes, layouts,
//             leading dims, C/bias, algorithm id).
//   search    opt-in (env SP24_CSLT_SEARCH=1): cusparseLtMatmulSearch once per plan key, on a seeded
//             synthetic operand (never the caller's data), never during a CUDA graph capture (the
//             default serves the capture). The chosen id (bounded by CONFIG_MAX_ID) and its split-K
//             attributes (SPLIT_K, SPLIT_K_MODE, SPLIT_K_BUFFERS) are read back, so the plan served
//             is the plan timed. It is trusted only after reproducing the default algorithm's bits on
//             3 exact small-integer synthetic operands (cuSPARSELt has returned wrong results for
//             some ids, intermittently: pytorch/pytorch#155333). A disagreement or any failure of
//             the search keeps the default, with a warning. Chosen algorithms are process-wide.
//   errors    only CUSPARSE_STATUS_NOT_SUPPORTED and CUSPARSE_STATUS_ARCH_MISMATCH mean "fall back"
//             (is_unsupported); every other status raises with cuSPARSELt's error name. An
//             ARCH_MISMATCH from cusparseLtInit is cached per device (not retried every call).
//   versions  the first handle checks that the loaded library has the header's major.minor
//             (version_mismatch); sp24 needs cuSPARSELt >= 0.8 (CMake refuses older headers).
#pragma once
#include <ATen/ATen.h>

#include "sp24/params.h"

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace sp24 {
namespace cslt {

// sp24's buffer size (cslt_bytes, sp24/cslt_layout.h) for a dense (M, K) matrix of dtype `dt`.
int64_t compressed_bytes(int64_t M, int64_t K, at::ScalarType dt);

// A reason why cuSPARSELt cannot serve this problem from the static rules, or "" if it may.
// Refuses, among others, an out_dt other than dt (16-bit inputs pair only with the same output type).
std::string static_unsupported_reason(int64_t M, int64_t K, int64_t N, at::ScalarType dt, at::ScalarType out_dt);

// The static rules, then the plan (built and cached, cheap next time) for A (M, K) @ b: a reason
// why cuSPARSELt refuses it, or "". Called before compressing, so that a refused problem does not
// pay for a compression it cannot use.
std::string mm_refusal(const char* op, int64_t M, int64_t K, const at::Tensor& b, bool with_bias,
                       at::ScalarType out_dtype, bool transpose_result);

// The statuses that mean "not this problem / not this GPU" (a fallback); every other one is an error.
bool is_unsupported(int status);

// Warns that sparse24_mm falls back to the dense GEMM, once per distinct reason (numbers ignored).
void warn_fallback(const char* op, const std::string& why);

// cuSPARSELt versions as cslt_version_code (sp24/cslt_identity.h): the loaded library (-1 if unreadable;
// needs no GPU) and the headers sp24 was compiled against.
int runtime_version();
int header_version();
// "" if the loaded library has the headers' major.minor, else what is wrong and the remedy.
std::string version_mismatch();
// major*10 + minor of a CUDA device (part of a GEMM-ready buffer's identity).
int64_t device_arch(int device);

// Compress a dense 2:4 matrix a (M, K), contiguous, on CUDA: a 1-D uint8 buffer in cuSPARSELt's
// own layout (row-major A, op N) of compressed_bytes(M, K, a.dtype) bytes when sp24_size (the op's
// contract; error if cuSPARSELt needs more), else of exactly the size cuSPARSELt asks for.
// Returns std::nullopt (and a reason) when cuSPARSELt reports that it cannot serve this GPU /
// operand (e.g. too many elements), so that sparse24_mm can fall back to a dense GEMM.
std::optional<at::Tensor> try_compress(const char* op, const at::Tensor& a, bool sp24_size, std::string* why);

// As try_compress, for a 2:4 operand in sp24's canonical form (values, indices contiguous, CUDA);
// `dense` returns its dense matrix (made only when cusparseLtSpMMACompress is called).
// Direct writer: for 16-bit operands with M % 64 == 0 and K % 32 == 0 on sm_90 the buffer can be written
// straight from (values, indices) (values copied, metadata by sp24/cslt_layout.h): no dense matrix,
// no cuSPARSELt compression (public evidence for the layout covers M % 64 == 0 and K % 64 == 0;
// expect the check to refuse K % 64 == 32). That layout is reverse-engineered, so it is used for a (device, dtype,
// M, K, size) key only after the buffer it wrote for the first operand of that key was byte-equal to
// cuSPARSELt's own; on a mismatch a warning says so and cuSPARSELt keeps compressing that key.
// SP24_CSLT_DIRECT=0 turns the direct writer off.
std::optional<at::Tensor> try_compress_sp24(const char* op, const at::Tensor& values, const at::Tensor& indices,
                                            const std::function<at::Tensor()>& dense, bool sp24_size,
                                            std::string* why);

// The writers of the candidate layout: "pack" writes the buffer from (values, indices) (above);
// "fused_sparsify" is sparsify24_cslt's row kernel, which writes it while sparsifying x. Both are
// checked once per (device, dtype, M, K), on a synthetic operand (seeded randn through sparsify24),
// against cusparseLtSpMMACompress; each serves that shape only if its bytes were equal. A check
// costs a few passes over an (M, K) operand (about 6*M*K bytes of scratch at its peak) and one
// device synchronisation, once per shape and process: for shapes that change every call (e.g. a
// varying token count), expect one check per new shape, or set SP24_CSLT_DIRECT=0. A failing
// check (e.g. out of memory) warns and leaves cuSPARSELt's compression in place for the shape.
struct DirectWriters {
  bool pack = false, fused = false;
  int64_t bytes = 0;  // cuSPARSELt's compressed size for the shape (0: cuSPARSELt refused it)
};

// One writer's verdict for a shape (for tests and benchmarks: sp24._C.cslt_direct_layout_checks).
struct DirectLayoutCheck {
  std::string writer;  // "pack" or "fused_sparsify"
  int device;
  std::string dtype;
  int64_t M, K, bytes;
  bool same;  // the writer's bytes equalled cuSPARSELt's: it serves this shape
};

// The fused writer: runs sparsify24_cuda(p) with its values and the layout's metadata going into a
// new buffer of `bytes` (zeros past them; `poison`: 0xA5 elsewhere before the kernel runs). p is a
// 16-bit, vectorised, in-domain sparsify (p.values and p.cslt_meta are set here).
at::Tensor write_fused(Sparsify24Params p, const at::TensorOptions& opts, int64_t bytes, bool poison = false);

// SP24_CSLT_DIRECT is not "0", `like` is fp16/bf16 on an sm_90 GPU and (M, K) is in the layout's domain.
bool direct_allowed(const at::Tensor& like, int64_t M, int64_t K);
// The verdicts for like's device and dtype and (M, K), running the check the first time (it
// synchronises the device; a mismatch warns once). std::nullopt during a CUDA graph capture of an
// unchecked shape. Call only where direct_allowed holds.
std::optional<DirectWriters> direct_writers(const char* op, const at::Tensor& like, int64_t M, int64_t K);
std::vector<DirectLayoutCheck> direct_layout_checks();

// out = A @ b (+ bias), A given by its compressed buffer. b (K, N) may be row-major (stride(1)==1)
// or column-major (stride(0)==1, e.g. w.t()). transpose_result: return (A @ b).T of shape (N, M),
// contiguous, written directly by cuSPARSELt (column-major D), no copy.
// Returns std::nullopt (and a reason) when cuSPARSELt reports that it cannot serve the problem;
// any other cuSPARSELt failure raises an error naming the op and the status.
std::optional<at::Tensor> try_mm(const char* op, const at::Tensor& compressed, int64_t M, int64_t K,
                                 const at::Tensor& b, const std::optional<at::Tensor>& bias,
                                 at::ScalarType out_dtype, bool transpose_result, std::string* why);

// The 2:4 FP8 GEMM: D (M, N) = alpha[i] * (A @ b)[i, :] (+ C[i, :]) in out_dtype (bfloat16 or
// float32), for the dense 2:4 e4m3 A (M, K) contiguous (compressed here by cuSPARSELt), b (K, N)
// e4m3 K-major (b.t() contiguous), alpha (M,) float32 on the device and C (M, N) of out_dtype or
// nullptr. fp32 accumulation. std::nullopt (and a reason) where cuSPARSELt cannot serve it (the
// static rules, the GPU, the shape); any other failure raises. Not searched (the default algorithm).
std::optional<at::Tensor> try_fp8_mm(const char* op, const at::Tensor& a_dense, const at::Tensor& b,
                                     const at::Tensor& alpha, const at::Tensor* c, at::ScalarType out_dtype,
                                     std::string* why);

// "major.minor.patch" of the cuSPARSELt the extension was compiled against.
std::string version();

}  // namespace cslt
}  // namespace sp24
