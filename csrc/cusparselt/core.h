// The torch-free core of sp24's cuSPARSELt use: handles, descriptors, plans, algorithm search,
// compression and the matmul, on raw pointers and plain structs.
//
// Every call sp24 makes into cuSPARSELt goes through this file, so that one set of call sequences
// exists. The torch glue (cslt.cpp, direct.cpp) only turns tensors into pointers, strides and
// sizes, allocates with torch's caching allocator, picks torch's current stream, and turns a Status
// into a torch error or a fallback. CI compiles this core, unchanged, against a contract test double
// of the cuSPARSELt API (csrc/emu/cusparselt/, written from cuSPARSELt's documentation) and runs
// the call sequences sp24 makes through it (tests/emu/test_cslt_contract.py); the CUDA build links
// the real library.
//
//   handles   one cusparseLtHandle_t per (thread, device): autograd's backward runs on another
//             thread, and a handle belongs to the device that was current when it was created. The
//             caller makes `device` current. Handles are never destroyed: cusparseLtDestroy may
//             touch the CUDA context, which can be gone when thread_local destructors run at
//             process exit; a handle is a few hundred bytes of host state.
//   plans     cached per thread (a plan belongs to its thread's handle), keyed by every input of
//             the plan (MmProblem). A thread's cached plans are destroyed when the thread exits
//             (descriptor and plan destruction are host-side releases in cuSPARSELt; tested with
//             the double: no live plan or descriptor survives its thread).
//   errors    only NOT_SUPPORTED and ARCH_MISMATCH mean "cuSPARSELt cannot serve this"
//             (is_unsupported); the glue falls back on those and raises on every other status.
//   versions  runtime_version / header_version as cslt_version_code (sp24/cslt_identity.h).
#pragma once

#include <cusparseLt.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <tuple>

namespace sp24 {
namespace cslt {
namespace core {

// Element types of a cuSPARSELt operand as sp24 names them (torch-free).
enum class Type : int { kF16 = 0, kBF16 = 1, kF32 = 2, kE4M3 = 3 };
cudaDataType cuda_type(Type t);
int type_bytes(Type t);
// torch's c10::toString spelling ("Half", "BFloat16", "Float", "Float8_e4m3fn").
const char* type_name(Type t);

// The outcome of one cuSPARSELt call: its status and where it came from ("" when SUCCESS).
struct Status {
  cusparseStatus_t code = CUSPARSE_STATUS_SUCCESS;
  std::string where;
  bool ok() const { return code == CUSPARSE_STATUS_SUCCESS; }
  // "<where> returned <NAME>"; with_string appends " (<cuSPARSELt's description>)".
  std::string text(bool with_string = false) const;
};
const char* status_name(cusparseStatus_t s);
const char* status_string(cusparseStatus_t s);

// The statuses that mean "not this problem / not this GPU" (a fallback); every other one is an error.
bool is_unsupported(cusparseStatus_t s);

// The cusparseLtHandle_t of this thread for `device` (made current by the caller), initialised on
// first use. nullptr and *st set when cusparseLtInit failed; an unsupported answer (this GPU has no
// 2:4 tensor cores for cuSPARSELt) is remembered per device and returned again without a new Init.
cusparseLtHandle_t* thread_handle(int device, Status* st);

// The algorithm a plan runs: cuSPARSELt's default (all -1), or what a search chose.
struct AlgChoice {
  int id = -1, split_k = -1, split_k_mode = -1, split_k_buffers = -1;
  auto tie() const { return std::tie(id, split_k, split_k_mode, split_k_buffers); }
  bool operator==(const AlgChoice& o) const { return tie() == o.tie(); }
};

// D = A @ B (+ C): A (M, K) 2:4, row-major, ld K; B (K, N) row-major with ld ldb, or column-major
// (passed as op(B) = T of its row-major (N, K) view, as PyTorch's own cuSPARSELt ops do) with ld
// ldb; D (M, N) row-major with ld ldd, or column-major (the transposed result) with ld ldd; C has
// D's layout (with_c: beta = 1).
// alpha_vec: D[i, :] = alpha[i] * (A @ B)[i, :] (+ beta[i] * C[i, :]) with device vectors alpha (M,)
// and, with C, beta (M,) (cuSPARSELt's ALPHA_/BETA_VECTOR_SCALING: one entry per row of D); the
// row scales of the FP8 path.
struct MmProblem {
  int device = 0;
  int64_t M = 0, K = 0, N = 0, ldb = 0, ldd = 0;
  Type ab = Type::kBF16, out = Type::kBF16;
  bool b_col_major = false, d_col_major = false, with_c = false, alpha_vec = false;
  AlgChoice alg;
  auto tie() const {
    return std::tie(device, M, K, N, ldb, ldd, ab, out, b_col_major, d_col_major, with_c, alpha_vec, alg.id,
                    alg.split_k, alg.split_k_mode, alg.split_k_buffers);
  }
  bool operator<(const MmProblem& o) const { return tie() < o.tie(); }
  // "(M, K, N) = (..), BFloat16 -> BFloat16[, b column-major][, transposed result]"
  std::string describe() const;
};

// A reason why cuSPARSELt cannot serve this problem by sp24's static rules, or "" if it may.
// 16-bit inputs: the same output type, M, K, N multiples of 16. E4M3 inputs (sm_89 / sm_90+):
// a bfloat16 or float32 output, M and K multiples of 32 (a structured 8-bit operand), N of 16, B
// K-major (the 8-bit "TN" rule: fp8_problem passes it so).
std::string static_refusal(int64_t M, int64_t K, int64_t N, Type ab, Type out);

// The FP8 problem sp24 runs: A (M, K) 2:4 e4m3 row-major, B (K, N) e4m3 K-major (the row-major
// (N, K) weight, ldb K), D (M, N) row-major in `out`, one alpha per row of D (alpha_vec), and with
// with_c a C of D's layout with one beta per row.
MmProblem fp8_problem(int device, int64_t M, int64_t K, int64_t N, Type out, bool with_c);

// How b (K, N) with strides (s0, s1) at `ptr` is passed: as is (row- or column-major), or copied
// to a contiguous row-major matrix (copy: ld = N) when neither layout meets the descriptor rules
// (unit stride, ld >= the other size, ld a multiple of 8 elements, 16-byte aligned pointer).
struct BLayout {
  bool col = false, copy = false;
  int64_t ld = 0;
};
BLayout b_layout(const void* ptr, int64_t s0, int64_t s1, int64_t K, int64_t N);
bool aligned16(const void* p);

// A built plan with its descriptors (heap-allocated: the plan refers to the descriptors' storage).
struct Plan {
  cusparseLtHandle_t* handle = nullptr;
  cusparseLtMatDescriptor_t a, b, c;
  cusparseLtMatmulDescriptor_t mm;
  cusparseLtMatmulAlgSelection_t alg;
  cusparseLtMatmulPlan_t plan;
  size_t workspace = 0;
  bool alpha_vec = false;  // the problem's: matmul passes the MmArgs' alpha / beta vectors
  bool alive = false;  // a, b, c, alg and plan initialised: ~Plan destroys them
  Status why;          // the status that stopped the build (or the workspace query)
  bool ok() const { return alive && why.ok(); }
  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan();
};

// Builds a plan (not cached): descriptors, matmul descriptor, algorithm selection with the
// problem's AlgChoice written (entries < 0 left at cuSPARSELt's default), plan, workspace size.
std::unique_ptr<Plan> make_plan(cusparseLtHandle_t* h, const MmProblem& p);
// The thread's cached plan for p (built on first use). Valid until the next cached_plan call on
// this thread (which may evict the cache) or the thread's exit.
Plan* cached_plan(cusparseLtHandle_t* h, const MmProblem& p);
// Number of plans in this thread's cache.
size_t cached_plans();

// The operands of one matmul. c == nullptr: beta = 0 and C = D. workspace may be nullptr only when
// the plan's workspace is 0. alpha / beta: the device vectors (M floats, 16-byte aligned) of an
// alpha_vec plan (beta only with c); ignored otherwise (alpha = 1, beta = c ? 1 : 0).
struct MmArgs {
  const void* a = nullptr;  // compressed A
  const void* b = nullptr;
  const void* c = nullptr;
  void* d = nullptr;
  const float* alpha = nullptr;
  const float* beta = nullptr;
  void* workspace = nullptr;
  cudaStream_t stream = nullptr;
};
Status matmul(const Plan& plan, const MmArgs& args);

// cusparseLtMatmulSearch on `plan` (its algorithm selection is rewritten: use a private plan), then
// the chosen algorithm read back: id (checked inside [0, CONFIG_MAX_ID)), split-K, its mode and
// buffers, normalised by normalize_cslt_alg (sp24/cslt_alg.h) so that only values valid to write
// back are kept. *bad_id is set (and the status is SUCCESS) when the id is outside the range.
Status search(Plan& plan, const MmArgs& args, AlgChoice* chosen, bool* bad_id, int* max_id);

// The 2:4 matrix A (M, K), row-major, ld K, as cuSPARSELt compresses it (the same descriptor as
// matrix A of make_plan: the compressed layout is defined by it).
class StructuredOperand {
 public:
  StructuredOperand(cusparseLtHandle_t* h, int64_t M, int64_t K, Type t);
  ~StructuredOperand();
  StructuredOperand(const StructuredOperand&) = delete;
  StructuredOperand& operator=(const StructuredOperand&) = delete;
  const Status& status() const { return st_; }  // of the descriptor's init
  // cusparseLtSpMMACompressedSize2: the compressed size and the scratch buffer size.
  Status sizes(size_t* compressed, size_t* scratch);
  // cusparseLtSpMMACompress2 of the dense matrix `dense` into `out` (scratch may be nullptr when
  // its size is 0).
  Status compress(const void* dense, void* out, void* scratch, cudaStream_t stream);

 private:
  cusparseLtHandle_t* h_;
  cusparseLtMatDescriptor_t desc_;
  bool alive_ = false;
  Status st_;
};

// cuSPARSELt versions as cslt_version_code: the loaded library (-1 if unreadable; needs no GPU)
// and the headers this core was compiled against; "" if the loaded library has the headers'
// major.minor, else what is wrong and the remedy.
int runtime_version();
int header_version();
std::string version();  // "major.minor.patch" of the headers
std::string version_mismatch();

}  // namespace core
}  // namespace cslt
}  // namespace sp24
