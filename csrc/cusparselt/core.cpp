// The torch-free cuSPARSELt core (see core.h for the design).
#include "cusparselt/core.h"

#include "cusparselt/version.h"
#include "sp24/cslt_alg.h"
#include "sp24/cslt_identity.h"

#include <map>
#include <mutex>
#include <sstream>
#include <unordered_map>
#include <utility>
#include <vector>

namespace sp24 {
namespace cslt {
namespace core {

cudaDataType cuda_type(Type t) {
  switch (t) {
    case Type::kF16: return CUDA_R_16F;
    case Type::kBF16: return CUDA_R_16BF;
    case Type::kE4M3: return CUDA_R_8F_E4M3;
    case Type::kF32: break;
  }
  return CUDA_R_32F;
}

int type_bytes(Type t) { return t == Type::kF32 ? 4 : t == Type::kE4M3 ? 1 : 2; }

const char* type_name(Type t) {
  switch (t) {
    case Type::kF16: return "Half";
    case Type::kBF16: return "BFloat16";
    case Type::kE4M3: return "Float8_e4m3fn";
    case Type::kF32: break;
  }
  return "Float";
}

const char* status_name(cusparseStatus_t s) {
  const char* n = cusparseLtGetErrorName(s);
  return n ? n : "unknown status";
}

const char* status_string(cusparseStatus_t s) {
  const char* n = cusparseLtGetErrorString(s);
  return n ? n : "no description";
}

std::string Status::text(bool with_string) const {
  std::string s = where + " returned " + status_name(code);
  if (with_string) s += std::string(" (") + status_string(code) + ")";
  return s;
}

// ARCH_MISMATCH: cuSPARSELt refuses the GPU itself (e.g. no sparse tensor cores). Everything else
// (INVALID_VALUE from a wrong descriptor, ALLOC_FAILED, EXECUTION_FAILED, ...) is an error: a bug
// must not turn into a silent, slower fallback.
bool is_unsupported(cusparseStatus_t s) {
  return s == CUSPARSE_STATUS_NOT_SUPPORTED || s == CUSPARSE_STATUS_ARCH_MISMATCH;
}

namespace {

Status check(cusparseStatus_t code, const char* where) {
  Status s;
  s.code = code;
  if (code != CUSPARSE_STATUS_SUCCESS) s.where = where;
  return s;
}

// cusparseLtInit's "not this GPU" answer, per device and process-wide: asked once, not every call.
std::mutex init_mutex;
std::map<int, cusparseStatus_t>& init_refused() {
  static std::map<int, cusparseStatus_t> m;
  return m;
}

struct ThreadHandles {
  std::unordered_map<int, cusparseLtHandle_t*> by_device;  // never destroyed (core.h, 'handles')
};

}  // namespace

cusparseLtHandle_t* thread_handle(int device, Status* st) {
  thread_local ThreadHandles th;
  auto it = th.by_device.find(device);
  if (it != th.by_device.end()) return it->second;
  {
    std::lock_guard<std::mutex> lock(init_mutex);
    auto r = init_refused().find(device);
    if (r != init_refused().end()) {
      *st = check(r->second, "cusparseLtInit");
      return nullptr;
    }
  }
  auto h = std::make_unique<cusparseLtHandle_t>();
  const cusparseStatus_t s = cusparseLtInit(h.get());
  if (s != CUSPARSE_STATUS_SUCCESS) {
    if (is_unsupported(s)) {
      std::lock_guard<std::mutex> lock(init_mutex);
      init_refused().emplace(device, s);
    }
    *st = check(s, "cusparseLtInit");
    return nullptr;  // h is freed: a failed Init leaves nothing to destroy
  }
  return th.by_device.emplace(device, h.release()).first->second;
}

std::string MmProblem::describe() const {
  std::ostringstream os;
  os << "(M, K, N) = (" << M << ", " << K << ", " << N << "), " << type_name(ab) << " -> " << type_name(out)
     << (b_col_major ? ", b column-major" : "") << (d_col_major ? ", transposed result" : "");
  return os.str();
}

std::string static_refusal(int64_t M, int64_t K, int64_t N, Type ab, Type out) {
  std::ostringstream os;
  if (ab == Type::kE4M3) {
    // cuSPARSELt's type table: E4M3 inputs with an E4M3, FP16, BF16 or FP32 output (FP32 compute);
    // sp24 uses BF16 (the FFN) and FP32 (an epilogue of its own follows). Descriptor sizes: 8-bit
    // structured rows/cols multiples of 32, dense of 16.
    if (out != Type::kBF16 && out != Type::kF32) {
      os << "sp24 runs cuSPARSELt's FP8 GEMM with a BFloat16 or Float output, got " << type_name(out);
    } else if (M % 32 || K % 32 || N % 16) {
      os << "FP8 2:4 needs M and K multiples of 32 and N of 16 for cuSPARSELt, got (" << M << ", " << K << ", " << N
         << ")";
    } else if (M == 0 || K == 0 || N == 0) {
      os << "empty problem";
    }
    return os.str();
  }
  if (ab != Type::kF16 && ab != Type::kBF16) {
    // cuSPARSELt's 50% sparsity for fp32 is 1:2 (TF32), not 2:4.
    os << "cuSPARSELt 2:4 serves float16/bfloat16 only, got " << type_name(ab);
  } else if (out != ab) {
    // cuSPARSELt's type table pairs 16F / 16BF inputs only with an output of the same type
    // (a different output type exists for int8 / fp8 inputs only), as PyTorch's _cslt_sparse_mm does.
    os << "cuSPARSELt pairs " << type_name(ab) << " inputs only with a " << type_name(ab) << " output, got out_dtype "
       << type_name(out);
  } else if (M % 16 || K % 16 || N % 16) {
    // Every dimension a multiple of 16 elements keeps rows 16-byte aligned and meets cuSPARSELt's
    // size rules for 16-bit types.
    os << "M, K, N must be multiples of 16 for cuSPARSELt, got (" << M << ", " << K << ", " << N << ")";
  } else if (M == 0 || K == 0 || N == 0) {
    os << "empty problem";
  }
  return os.str();
}

MmProblem fp8_problem(int device, int64_t M, int64_t K, int64_t N, Type out, bool with_c) {
  MmProblem k;
  k.device = device;
  k.M = M;
  k.K = K;
  k.N = N;
  k.ldb = K;
  k.ldd = N;
  k.ab = Type::kE4M3;
  k.out = out;
  k.b_col_major = true;  // B (K, N) K-major = the row-major (N, K) weight with op(B) = T
  k.with_c = with_c;
  k.alpha_vec = true;
  return k;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

BLayout b_layout(const void* ptr, int64_t s0, int64_t s1, int64_t K, int64_t N) {
  const bool aligned = aligned16(ptr);
  if (s1 == 1 && s0 >= N && s0 % 8 == 0 && aligned) return {false, false, s0};
  if (s0 == 1 && s1 >= K && s1 % 8 == 0 && aligned) return {true, false, s1};
  return {false, true, N};
}

Plan::~Plan() {
  if (!alive) return;
  cusparseLtMatmulPlanDestroy(&plan);
  cusparseLtMatmulAlgSelectionDestroy(&alg);
  cusparseLtMatDescriptorDestroy(&a);
  cusparseLtMatDescriptorDestroy(&b);
  cusparseLtMatDescriptorDestroy(&c);
}

namespace {

constexpr uint32_t kAlign = 16;  // bytes; every operand sp24 passes is 16-byte aligned
constexpr size_t kMaxPlans = 512;

// Descriptors made so far by make_plan, destroyed again (newest first) unless released.
struct DescriptorStack {
  std::vector<cusparseLtMatDescriptor_t*> descs;
  cusparseLtMatmulAlgSelection_t* alg = nullptr;
  ~DescriptorStack() {
    if (alg) cusparseLtMatmulAlgSelectionDestroy(alg);
    for (auto it = descs.rbegin(); it != descs.rend(); ++it) cusparseLtMatDescriptorDestroy(*it);
  }
  void release() {
    descs.clear();
    alg = nullptr;
  }
};

// The problem's non-default algorithm attributes, in the order cuSPARSELt applies them.
Status set_alg_attributes(cusparseLtHandle_t* h, cusparseLtMatmulAlgSelection_t* alg, const AlgChoice& c) {
  const std::pair<cusparseLtMatmulAlgAttribute_t, int> attrs[] = {{CUSPARSELT_MATMUL_ALG_CONFIG_ID, c.id},
                                                                   {CUSPARSELT_MATMUL_SPLIT_K, c.split_k},
                                                                   {CUSPARSELT_MATMUL_SPLIT_K_MODE, c.split_k_mode},
                                                                   {CUSPARSELT_MATMUL_SPLIT_K_BUFFERS, c.split_k_buffers}};
  for (const auto& [attr, value] : attrs) {
    if (value < 0) continue;  // cuSPARSELt's default
    int v = value;
    Status s = check(cusparseLtMatmulAlgSetAttribute(h, alg, attr, &v, sizeof(v)), "cusparseLtMatmulAlgSetAttribute");
    if (!s.ok()) return s;
  }
  return Status{};
}

}  // namespace

std::unique_ptr<Plan> make_plan(cusparseLtHandle_t* h, const MmProblem& k) {
  auto p = std::make_unique<Plan>();
  p->handle = h;
  DescriptorStack made;
  auto fail = [&](const Status& s) {
    p->why = s;
    return std::move(p);
  };
  Status s = check(cusparseLtStructuredDescriptorInit(h, &p->a, k.M, k.K, k.K, kAlign, cuda_type(k.ab),
                                                      CUSPARSE_ORDER_ROW, CUSPARSELT_SPARSITY_50_PERCENT),
                   "cusparseLtStructuredDescriptorInit (A)");
  if (!s.ok()) return fail(s);
  made.descs.push_back(&p->a);
  // A column-major b (K, N) is the row-major (N, K) matrix it is a view of, passed with op(B) = T.
  s = check(k.b_col_major ? cusparseLtDenseDescriptorInit(h, &p->b, k.N, k.K, k.ldb, kAlign, cuda_type(k.ab),
                                                          CUSPARSE_ORDER_ROW)
                          : cusparseLtDenseDescriptorInit(h, &p->b, k.K, k.N, k.ldb, kAlign, cuda_type(k.ab),
                                                          CUSPARSE_ORDER_ROW),
            "cusparseLtDenseDescriptorInit (B)");
  if (!s.ok()) return fail(s);
  made.descs.push_back(&p->b);
  s = check(cusparseLtDenseDescriptorInit(h, &p->c, k.M, k.N, k.ldd, kAlign, cuda_type(k.out),
                                          k.d_col_major ? CUSPARSE_ORDER_COL : CUSPARSE_ORDER_ROW),
            "cusparseLtDenseDescriptorInit (C/D)");
  if (!s.ok()) return fail(s);
  made.descs.push_back(&p->c);
  s = check(cusparseLtMatmulDescriptorInit(h, &p->mm, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                           k.b_col_major ? CUSPARSE_OPERATION_TRANSPOSE : CUSPARSE_OPERATION_NON_TRANSPOSE,
                                           &p->a, &p->b, &p->c, &p->c, CUSPARSE_COMPUTE_32F),
            "cusparseLtMatmulDescriptorInit");
  if (!s.ok()) return fail(s);
  if (k.alpha_vec) {
    // one alpha per row of D; with C, one beta per row too (BETA_VECTOR_SCALING implies ALPHA_...):
    // without it cuSPARSELt ignores beta and does not read C
    const int on = 1;
    s = check(cusparseLtMatmulDescSetAttribute(h, &p->mm, CUSPARSELT_MATMUL_ALPHA_VECTOR_SCALING, &on, sizeof(on)),
              "cusparseLtMatmulDescSetAttribute (ALPHA_VECTOR_SCALING)");
    if (s.ok() && k.with_c) {
      s = check(cusparseLtMatmulDescSetAttribute(h, &p->mm, CUSPARSELT_MATMUL_BETA_VECTOR_SCALING, &on, sizeof(on)),
                "cusparseLtMatmulDescSetAttribute (BETA_VECTOR_SCALING)");
    }
    if (!s.ok()) return fail(s);
    p->alpha_vec = true;
  }
  s = check(cusparseLtMatmulAlgSelectionInit(h, &p->alg, &p->mm, CUSPARSELT_MATMUL_ALG_DEFAULT),
            "cusparseLtMatmulAlgSelectionInit");
  if (!s.ok()) return fail(s);
  made.alg = &p->alg;
  s = set_alg_attributes(h, &p->alg, k.alg);
  if (!s.ok()) return fail(s);
  s = check(cusparseLtMatmulPlanInit(h, &p->plan, &p->mm, &p->alg), "cusparseLtMatmulPlanInit");
  if (!s.ok()) return fail(s);
  made.release();
  p->alive = true;  // from here ~Plan destroys everything
  p->why = check(cusparseLtMatmulGetWorkspace(h, &p->plan, &p->workspace), "cusparseLtMatmulGetWorkspace");
  return p;
}

namespace {
std::map<MmProblem, std::unique_ptr<Plan>>& thread_plans() {
  // destroyed with the thread: its plans and descriptors are released (core.h, 'plans')
  thread_local std::map<MmProblem, std::unique_ptr<Plan>> cache;
  return cache;
}
}  // namespace

Plan* cached_plan(cusparseLtHandle_t* h, const MmProblem& k) {
  auto& cache = thread_plans();
  auto it = cache.find(k);
  if (it != cache.end()) return it->second.get();
  if (cache.size() >= kMaxPlans) cache.clear();
  auto p = make_plan(h, k);
  Plan* raw = p.get();
  cache.emplace(k, std::move(p));
  return raw;
}

size_t cached_plans() { return thread_plans().size(); }

namespace {
constexpr float kOne = 1.f, kZero = 0.f;
// The alpha and beta cuSPARSELt reads: the vectors of an alpha_vec plan (beta NULL without C: the
// docs allow it with ALPHA_VECTOR_SCALING alone), else host scalars 1 and (C ? 1 : 0).
const void* alpha_of(const Plan& p, const MmArgs& a) { return p.alpha_vec ? static_cast<const void*>(a.alpha) : &kOne; }
const void* beta_of(const Plan& p, const MmArgs& a) {
  if (p.alpha_vec) return a.c ? a.beta : nullptr;
  return a.c ? &kOne : &kZero;
}
}  // namespace

Status matmul(const Plan& p, const MmArgs& a) {
  cudaStream_t streams[1] = {a.stream};
  return check(cusparseLtMatmul(p.handle, &p.plan, alpha_of(p, a), a.a, a.b, beta_of(p, a), a.c ? a.c : a.d, a.d,
                                p.workspace ? a.workspace : nullptr, streams, 1),
               "cusparseLtMatmul");
}

Status search(Plan& p, const MmArgs& a, AlgChoice* chosen, bool* bad_id, int* max_id) {
  cudaStream_t streams[1] = {a.stream};
  Status s = check(cusparseLtMatmulSearch(p.handle, &p.plan, alpha_of(p, a), a.a, a.b, beta_of(p, a), a.c ? a.c : a.d,
                                          a.d, p.workspace ? a.workspace : nullptr, streams, 1),
                   "cusparseLtMatmulSearch");
  if (!s.ok()) return s;
  AlgChoice c;
  const std::pair<cusparseLtMatmulAlgAttribute_t, int*> reads[] = {{CUSPARSELT_MATMUL_ALG_CONFIG_ID, &c.id},
                                                                   {CUSPARSELT_MATMUL_ALG_CONFIG_MAX_ID, max_id},
                                                                   {CUSPARSELT_MATMUL_SPLIT_K, &c.split_k},
                                                                   {CUSPARSELT_MATMUL_SPLIT_K_MODE, &c.split_k_mode},
                                                                   {CUSPARSELT_MATMUL_SPLIT_K_BUFFERS, &c.split_k_buffers}};
  for (const auto& [attr, dst] : reads) {
    s = check(cusparseLtMatmulAlgGetAttribute(p.handle, &p.alg, attr, dst, sizeof(int)), "cusparseLtMatmulAlgGetAttribute");
    if (!s.ok()) return s;
  }
  *bad_id = c.id < 0 || c.id >= *max_id;
  // only the attributes that are valid to write back (sp24/cslt_alg.h)
  const CsltAlg n = normalize_cslt_alg({c.id, c.split_k, c.split_k_mode, c.split_k_buffers});
  *chosen = AlgChoice{n.id, n.split_k, n.split_k_mode, n.split_k_buffers};
  return Status{};
}

StructuredOperand::StructuredOperand(cusparseLtHandle_t* h, int64_t M, int64_t K, Type t) : h_(h) {
  st_ = check(cusparseLtStructuredDescriptorInit(h, &desc_, M, K, K, kAlign, cuda_type(t), CUSPARSE_ORDER_ROW,
                                                 CUSPARSELT_SPARSITY_50_PERCENT),
              "cusparseLtStructuredDescriptorInit");
  alive_ = st_.ok();
}

StructuredOperand::~StructuredOperand() {
  if (alive_) cusparseLtMatDescriptorDestroy(&desc_);
}

Status StructuredOperand::sizes(size_t* compressed, size_t* scratch) {
  return check(cusparseLtSpMMACompressedSize2(h_, &desc_, compressed, scratch), "cusparseLtSpMMACompressedSize2");
}

Status StructuredOperand::compress(const void* dense, void* out, void* scratch, cudaStream_t stream) {
  return check(cusparseLtSpMMACompress2(h_, &desc_, 1, CUSPARSE_OPERATION_NON_TRANSPOSE, dense, out, scratch, stream),
               "cusparseLtSpMMACompress2");
}

int runtime_version() {
  static const int v = []() {
    int major = -1, minor = 0, patch = 0;
    if (cusparseLtGetProperty(MAJOR_VERSION, &major) != CUSPARSE_STATUS_SUCCESS ||
        cusparseLtGetProperty(MINOR_VERSION, &minor) != CUSPARSE_STATUS_SUCCESS ||
        cusparseLtGetProperty(PATCH_LEVEL, &patch) != CUSPARSE_STATUS_SUCCESS) {
      return -1;
    }
    return static_cast<int>(cslt_version_code(major, minor, patch));
  }();
  return v;  // the loaded library does not change within a process
}

int header_version() { return static_cast<int>(cslt_version_code(SP24_CSLT_MAJOR, SP24_CSLT_MINOR, SP24_CSLT_PATCH)); }

std::string version() {
  std::ostringstream os;
  os << SP24_CSLT_MAJOR << "." << SP24_CSLT_MINOR << "." << SP24_CSLT_PATCH;
  return os.str();
}

std::string version_mismatch() {
  const int rt = runtime_version(), hd = header_version();
  std::ostringstream os;
  if (rt < 0) {
    os << "cannot read the loaded cuSPARSELt's version (cusparseLtGetProperty failed)";
  } else if (rt / 1000 != hd / 1000) {
    // same major.minor: the API and the compressed layout sp24 was built for; a newer patch
    // (e.g. 0.8.1 over 0.8.0, same SONAME) is allowed and recorded in every benchmark JSON
    os << "the loaded cuSPARSELt is " << cslt_version_string(rt) << " but sp24 was compiled against cuSPARSELt "
       << version() << " headers; rebuild sp24 against the cuSPARSELt that torch loads "
       << "(pip install --no-build-isolation -e .)";
  }
  return os.str();
}

}  // namespace core
}  // namespace cslt
}  // namespace sp24
