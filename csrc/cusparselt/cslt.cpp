// cuSPARSELt wrapper (see cslt.h for the design).
#include "cusparselt/cslt.h"
#include "cusparselt/version.h"
#include "sp24/cslt_alg.h"
#include "sp24/cslt_identity.h"
#include "sp24/cslt_layout.h"
#include "sp24/params.h"

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/Exception.h>
#include <cusparseLt.h>

#include <cstdlib>
#include <cctype>
#include <map>
#include <set>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <tuple>
#include <unordered_map>

namespace sp24 {
namespace cslt {
namespace {

const char* status_name(cusparseStatus_t s) {
  const char* n = cusparseLtGetErrorName(s);
  return n ? n : "unknown status";
}

#define SP24_CSLT(op, expr)                                                                                 \
  do {                                                                                                      \
    const cusparseStatus_t _st = (expr);                                                                    \
    TORCH_CHECK(_st == CUSPARSE_STATUS_SUCCESS, op, ": cuSPARSELt call ", #expr, " failed with ",             \
                status_name(_st), " (", cusparseLtGetErrorString(_st), ")");                              \
  } while (0)

}  // namespace

// Statuses with which cuSPARSELt says "this problem / this GPU is not for me": only these become a
// dense fallback. ARCH_MISMATCH: cuSPARSELt refuses the GPU itself (e.g. no sparse tensor cores).
// Everything else (INVALID_VALUE from a wrong descriptor, ALLOC_FAILED, EXECUTION_FAILED, ...)
// raises with cuSPARSELt's error name: a bug must not turn into a silent, slower fallback.
bool is_unsupported(int status) {
  const auto s = static_cast<cusparseStatus_t>(status);
  return s == CUSPARSE_STATUS_NOT_SUPPORTED || s == CUSPARSE_STATUS_ARCH_MISMATCH;
}

namespace {

cudaDataType cuda_type(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return CUDA_R_16F;
    case at::kBFloat16: return CUDA_R_16BF;
    default: return CUDA_R_32F;
  }
}

// ---- versions: the library that is loaded must be the one sp24 was compiled against ------------------
void check_runtime_version(const char* op) {
  static const std::string problem = version_mismatch();
  TORCH_CHECK(problem.empty(), op, ": ", problem);
}

// ---- handles: one per (thread, device) ----------------------------------------------------------
// Deliberately never destroyed: thread_local destructors can run after the CUDA context is gone at
// process exit; a handle is a few hundred bytes of host state.
struct ThreadHandles {
  std::unordered_map<int, cusparseLtHandle_t*> by_device;
};

// The caller holds a CUDAGuard for `device` (cusparseLtInit ties the handle to the current device).
// Returns nullptr and sets *unsupported when cuSPARSELt refuses this GPU and the caller can fall
// back (unsupported != nullptr); any other failure raises.
// cusparseLtInit's "not this GPU" answer, per device, process-wide: asked once, not on every call.
std::mutex init_mutex;
std::map<int, cusparseStatus_t>& init_refused() {
  static std::map<int, cusparseStatus_t> m;
  return m;
}

cusparseLtHandle_t* handle_for(const char* op, int device, cusparseStatus_t* unsupported = nullptr) {
  thread_local ThreadHandles th;
  auto it = th.by_device.find(device);
  if (it != th.by_device.end()) return it->second;
  {
    std::lock_guard<std::mutex> lock(init_mutex);
    auto r = init_refused().find(device);
    if (r != init_refused().end()) {
      if (unsupported != nullptr) {
        *unsupported = r->second;
        return nullptr;
      }
      SP24_CSLT(op, r->second);
    }
  }
  check_runtime_version(op);  // once per process; raises on a header/library mismatch
  // Freed again when cusparseLtInit fails (the old code leaked it before raising).
  auto h = std::make_unique<cusparseLtHandle_t>();
  const cusparseStatus_t s = cusparseLtInit(h.get());
  if (s != CUSPARSE_STATUS_SUCCESS && is_unsupported(s)) {
    std::lock_guard<std::mutex> lock(init_mutex);
    init_refused().emplace(device, s);
    if (unsupported != nullptr) {
      *unsupported = s;
      return nullptr;
    }
  }
  SP24_CSLT(op, s);
  return th.by_device.emplace(device, h.release()).first->second;
}

// ---- plan cache (per thread: plans belong to a handle) -------------------------------------------
// The algorithm a plan runs: cuSPARSELt's default (all -1), or what search chose, with the split-K
// attributes read back from the searched selection (the plan that is served is the one that was timed).
struct AlgChoice {
  int id = -1, split_k = -1, split_k_mode = -1, split_k_buffers = -1;
  auto tie() const { return std::tie(id, split_k, split_k_mode, split_k_buffers); }
};

struct PlanKey {
  int device;
  int64_t M, K, N, ldb, ldd;
  int dt, out_dt;
  bool b_col_major, d_col_major, with_c;
  AlgChoice alg;
  auto tie() const {
    return std::tie(device, M, K, N, ldb, ldd, dt, out_dt, b_col_major, d_col_major, with_c, alg.id, alg.split_k,
                    alg.split_k_mode, alg.split_k_buffers);
  }
  bool operator<(const PlanKey& o) const { return tie() < o.tie(); }
};

// Heap-allocated so that the descriptors the plan refers to never move.
struct Plan {
  cusparseLtMatDescriptor_t a, b, c;
  cusparseLtMatmulDescriptor_t mm;
  cusparseLtMatmulAlgSelection_t alg;
  cusparseLtMatmulPlan_t plan;
  size_t workspace = 0;
  bool ok = false;  // plan initialised; then a, b, c, alg and plan are alive until ~Plan
  cusparseStatus_t why = CUSPARSE_STATUS_SUCCESS;  // when !ok: the unsupported status
  std::string where;
  ~Plan() {
    if (ok) {
      cusparseLtMatmulPlanDestroy(&plan);
      cusparseLtMatmulAlgSelectionDestroy(&alg);
      cusparseLtMatDescriptorDestroy(&a);
      cusparseLtMatDescriptorDestroy(&b);
      cusparseLtMatDescriptorDestroy(&c);
    }
  }
};

constexpr size_t kMaxPlans = 512;

// Builds a plan; returns it with ok == false if cuSPARSELt reports the problem unsupported.
std::unique_ptr<Plan> make_plan(const char* op, cusparseLtHandle_t* h, const PlanKey& k) {
  auto p = std::make_unique<Plan>();
  const auto dt = static_cast<at::ScalarType>(k.dt), odt = static_cast<at::ScalarType>(k.out_dt);
  const uint32_t align = 16;
  auto fail = [&](cusparseStatus_t s, const char* where) {
    if (!is_unsupported(s)) {
      TORCH_CHECK(false, op, ": cuSPARSELt ", where, " failed with ", status_name(s), " (",
                  cusparseLtGetErrorString(s), ")");
    }
    p->why = s;
    p->where = where;
    return std::move(p);
  };
  cusparseStatus_t s;
  s = cusparseLtStructuredDescriptorInit(h, &p->a, k.M, k.K, k.K, align, cuda_type(dt), CUSPARSE_ORDER_ROW,
                                         CUSPARSELT_SPARSITY_50_PERCENT);
  if (s != CUSPARSE_STATUS_SUCCESS) return fail(s, "cusparseLtStructuredDescriptorInit (A)");
  // A column-major b (K, N) is passed as op(B) = T of the row-major (N, K) it is a view of, the
  // form PyTorch's own cuSPARSELt ops use (aten/src/ATen/native/sparse/cuda/cuSPARSELtOps.cpp).
  s = k.b_col_major ? cusparseLtDenseDescriptorInit(h, &p->b, k.N, k.K, k.ldb, align, cuda_type(dt), CUSPARSE_ORDER_ROW)
                    : cusparseLtDenseDescriptorInit(h, &p->b, k.K, k.N, k.ldb, align, cuda_type(dt), CUSPARSE_ORDER_ROW);
  if (s != CUSPARSE_STATUS_SUCCESS) {
    cusparseLtMatDescriptorDestroy(&p->a);
    return fail(s, "cusparseLtDenseDescriptorInit (B)");
  }
  s = cusparseLtDenseDescriptorInit(h, &p->c, k.M, k.N, k.ldd, align, cuda_type(odt),
                                    k.d_col_major ? CUSPARSE_ORDER_COL : CUSPARSE_ORDER_ROW);
  if (s != CUSPARSE_STATUS_SUCCESS) {
    cusparseLtMatDescriptorDestroy(&p->a);
    cusparseLtMatDescriptorDestroy(&p->b);
    return fail(s, "cusparseLtDenseDescriptorInit (C/D)");
  }
  auto destroy_descs = [&]() {
    cusparseLtMatDescriptorDestroy(&p->a);
    cusparseLtMatDescriptorDestroy(&p->b);
    cusparseLtMatDescriptorDestroy(&p->c);
  };
  s = cusparseLtMatmulDescriptorInit(h, &p->mm, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                     k.b_col_major ? CUSPARSE_OPERATION_TRANSPOSE : CUSPARSE_OPERATION_NON_TRANSPOSE,
                                     &p->a, &p->b, &p->c, &p->c, CUSPARSE_COMPUTE_32F);
  if (s != CUSPARSE_STATUS_SUCCESS) {
    destroy_descs();
    return fail(s, "cusparseLtMatmulDescriptorInit");
  }
  s = cusparseLtMatmulAlgSelectionInit(h, &p->alg, &p->mm, CUSPARSELT_MATMUL_ALG_DEFAULT);
  if (s != CUSPARSE_STATUS_SUCCESS) {
    destroy_descs();
    return fail(s, "cusparseLtMatmulAlgSelectionInit");
  }
  const std::pair<cusparseLtMatmulAlgAttribute_t, int> attrs[] = {
      {CUSPARSELT_MATMUL_ALG_CONFIG_ID, k.alg.id},
      {CUSPARSELT_MATMUL_SPLIT_K, k.alg.split_k},
      {CUSPARSELT_MATMUL_SPLIT_K_MODE, k.alg.split_k_mode},
      {CUSPARSELT_MATMUL_SPLIT_K_BUFFERS, k.alg.split_k_buffers}};
  for (const auto& [attr, value] : attrs) {
    if (value < 0) continue;  // cuSPARSELt's default
    int v = value;
    s = cusparseLtMatmulAlgSetAttribute(h, &p->alg, attr, &v, sizeof(v));
    if (s != CUSPARSE_STATUS_SUCCESS) {
      cusparseLtMatmulAlgSelectionDestroy(&p->alg);
      destroy_descs();
      return fail(s, "cusparseLtMatmulAlgSetAttribute");
    }
  }
  s = cusparseLtMatmulPlanInit(h, &p->plan, &p->mm, &p->alg);
  if (s != CUSPARSE_STATUS_SUCCESS) {
    cusparseLtMatmulAlgSelectionDestroy(&p->alg);
    destroy_descs();
    return fail(s, "cusparseLtMatmulPlanInit");
  }
  p->ok = true;
  SP24_CSLT(op, cusparseLtMatmulGetWorkspace(h, &p->plan, &p->workspace));
  return p;
}

// The returned pointer is valid until the next plan_for call on this thread (which may evict).
Plan* plan_for(const char* op, cusparseLtHandle_t* h, const PlanKey& k) {
  thread_local std::map<PlanKey, std::unique_ptr<Plan>> cache;
  auto it = cache.find(k);
  if (it != cache.end()) return it->second.get();
  if (cache.size() >= kMaxPlans) cache.clear();
  auto p = make_plan(op, h, k);
  Plan* raw = p.get();
  cache.emplace(k, std::move(p));
  return raw;
}

// ---- algorithm search (opt-in), process-wide chosen algorithms -------------------------------------
bool search_enabled() {
  const char* e = std::getenv("SP24_CSLT_SEARCH");
  return e != nullptr && e[0] != '\0' && std::string(e) != "0";
}

std::mutex g_alg_mutex;
std::map<PlanKey, AlgChoice> g_alg_ids;  // key with the default AlgChoice -> chosen algorithm

void run_plan(const char* op, cusparseLtHandle_t* h, Plan* p, const at::Tensor& compressed, const at::Tensor& b,
              const at::Tensor* c, at::Tensor& out, cudaStream_t stream) {
  const float alpha = 1.f, beta = c ? 1.f : 0.f;
  at::Tensor ws = at::empty({static_cast<int64_t>(p->workspace)}, b.options().dtype(at::kByte));
  cudaStream_t streams[1] = {stream};
  SP24_CSLT(op, cusparseLtMatmul(h, &p->plan, &alpha, compressed.data_ptr(), b.data_ptr(), &beta,
                                 c ? c->data_ptr() : out.data_ptr(), out.data_ptr(),
                                 p->workspace ? ws.data_ptr() : nullptr, streams, 1));
}

// Synthetic operands for a plan key, from a private generator (the caller's data and RNG are never
// used: an all-zero operand would approve any algorithm). Entries are small integers, so every
// correct algorithm -- whatever its split of K -- computes the same exact fp32 sums and therefore
// the same bits: a candidate is compared with the default algorithm by torch.equal.
struct Synthetic {
  at::Tensor a_buf, b, c, out;
};

Synthetic synthetic_operands(const char* op, const PlanKey& k, const at::TensorOptions& opts, uint64_t seed) {
  auto gen = at::cuda::detail::createCUDAGenerator(k.device);
  gen.set_current_seed(seed);
  const auto dt = static_cast<at::ScalarType>(k.dt), odt = static_cast<at::ScalarType>(k.out_dt);
  const auto o = opts.dtype(dt);
  Synthetic s;
  // A: integers in [-2, 2], two of every four zeroed by a row-dependent 2:4 pattern
  at::Tensor a = at::randint(-2, 3, {k.M, k.K}, gen, o);
  at::Tensor col = at::arange(k.K, opts.dtype(at::kLong)).remainder(4).view({1, k.K});
  at::Tensor row = at::arange(k.M, opts.dtype(at::kLong)).remainder(3).view({k.M, 1});
  a = a.mul((col.eq(row).logical_or(col.eq(row + 1))).to(dt));
  std::string why;
  auto buf = try_compress(op, a, false, &why);
  TORCH_CHECK(buf.has_value(), op, ": cuSPARSELt refused the synthetic operand of the algorithm check: ", why);
  s.a_buf = *buf;
  // B (K, N) with the key's layout and leading dimension; entries in [-1, 1]
  if (k.b_col_major) {
    s.b = at::randint(-1, 2, {k.N, k.ldb}, gen, o).narrow(1, 0, k.K).t();
  } else {
    s.b = at::randint(-1, 2, {k.K, k.ldb}, gen, o).narrow(1, 0, k.N);
  }
  const std::vector<int64_t> d_shape = k.d_col_major ? std::vector<int64_t>{k.N, k.M} : std::vector<int64_t>{k.M, k.N};
  if (k.with_c) s.c = at::randint(-4, 5, d_shape, gen, opts.dtype(odt));
  s.out = at::empty(d_shape, opts.dtype(odt));
  return s;
}

// cusparseLtMatmulSearch on a private plan for `key`; the chosen algorithm with its split-K
// attributes read back. Raises on any cuSPARSELt failure (the caller keeps the default then).
AlgChoice run_search(const char* op, cusparseLtHandle_t* h, const PlanKey& key, const Synthetic& s,
                     cudaStream_t stream) {
  auto sp = make_plan(op, h, key);  // fresh: search rewrites its algorithm selection
  TORCH_CHECK(sp->ok, op, ": ", sp->where, " returned ", status_name(sp->why), " for the search plan");
  at::Tensor tmp = at::empty_like(s.out);
  at::Tensor ws = at::empty({static_cast<int64_t>(sp->workspace)}, s.b.options().dtype(at::kByte));
  const float alpha = 1.f, beta = s.c.defined() ? 1.f : 0.f;
  cudaStream_t streams[1] = {stream};
  SP24_CSLT(op, cusparseLtMatmulSearch(h, &sp->plan, &alpha, s.a_buf.data_ptr(), s.b.data_ptr(), &beta,
                                       s.c.defined() ? s.c.data_ptr() : tmp.data_ptr(), tmp.data_ptr(),
                                       sp->workspace ? ws.data_ptr() : nullptr, streams, 1));
  AlgChoice c;
  int max_id = 0;
  SP24_CSLT(op, cusparseLtMatmulAlgGetAttribute(h, &sp->alg, CUSPARSELT_MATMUL_ALG_CONFIG_ID, &c.id, sizeof(int)));
  SP24_CSLT(op, cusparseLtMatmulAlgGetAttribute(h, &sp->alg, CUSPARSELT_MATMUL_ALG_CONFIG_MAX_ID, &max_id, sizeof(int)));
  SP24_CSLT(op, cusparseLtMatmulAlgGetAttribute(h, &sp->alg, CUSPARSELT_MATMUL_SPLIT_K, &c.split_k, sizeof(int)));
  SP24_CSLT(op, cusparseLtMatmulAlgGetAttribute(h, &sp->alg, CUSPARSELT_MATMUL_SPLIT_K_MODE, &c.split_k_mode, sizeof(int)));
  SP24_CSLT(op, cusparseLtMatmulAlgGetAttribute(h, &sp->alg, CUSPARSELT_MATMUL_SPLIT_K_BUFFERS, &c.split_k_buffers,
                                                sizeof(int)));
  TORCH_CHECK(c.id >= 0 && c.id < max_id, op, ": cusparseLtMatmulSearch chose algorithm id ", c.id,
              ", outside [0, CONFIG_MAX_ID = ", max_id, ")");
  // only the attributes that are valid to write back (sp24/cslt_alg.h)
  const CsltAlg n = normalize_cslt_alg({c.id, c.split_k, c.split_k_mode, c.split_k_buffers});
  c.split_k = n.split_k;
  c.split_k_mode = n.split_k_mode;
  c.split_k_buffers = n.split_k_buffers;
  return c;
}

constexpr int kSearchChecks = 3;  // synthetic operands a searched algorithm must reproduce

// The algorithm for this key: searched once per key and process, verified on kSearchChecks seeded
// synthetic operands against the default algorithm (cuSPARSELt has returned wrong results for some
// ids, intermittently: pytorch/pytorch#155333). Never during a CUDA graph capture (search and the
// check synchronise): the default serves a capture, and the search happens on the next eager call.
// Any failure keeps the default, with a warning.
AlgChoice searched_alg(const char* op, cusparseLtHandle_t* h, const PlanKey& key, const at::TensorOptions& opts,
                       cudaStream_t stream) {
  {
    std::lock_guard<std::mutex> lock(g_alg_mutex);
    auto it = g_alg_ids.find(key);
    if (it != g_alg_ids.end()) return it->second;
  }
  if (c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None) return AlgChoice{};
  AlgChoice chosen;
  try {
    // private plans, not the per-thread cache: a cache eviction in between cannot free them
    auto def = make_plan(op, h, key);
    if (def->ok) {
      const Synthetic s0 = synthetic_operands(op, key, opts, 0x5eed0);
      const AlgChoice cand = run_search(op, h, key, s0, stream);
      PlanKey ck = key;
      ck.alg = cand;
      auto cp = make_plan(op, h, ck);
      TORCH_CHECK(cp->ok, op, ": ", cp->where, " returned ", status_name(cp->why), " for the searched algorithm");
      int agreed = 0;
      for (int t = 0; t < kSearchChecks; ++t) {
        const Synthetic s = t == 0 ? s0 : synthetic_operands(op, key, opts, 0x5eed0 + t);
        at::Tensor ref = at::empty_like(s.out), got = at::empty_like(s.out);
        run_plan(op, h, def.get(), s.a_buf, s.b, s.c.defined() ? &s.c : nullptr, ref, stream);
        run_plan(op, h, cp.get(), s.a_buf, s.b, s.c.defined() ? &s.c : nullptr, got, stream);
        agreed += at::equal(ref, got) ? 1 : 0;
      }
      if (agreed == kSearchChecks) {
        chosen = cand;
      } else {
        TORCH_WARN(op, ": cuSPARSELt algorithm id ", cand.id, " (split-K ", cand.split_k, ", mode ", cand.split_k_mode,
                   ", buffers ", cand.split_k_buffers, ") chosen by search for (M, K, N) = (", key.M, ", ", key.K, ", ",
                   key.N, ") disagreed with the default algorithm on ", kSearchChecks - agreed, " of ", kSearchChecks,
                   " exact integer operands; keeping the default (see pytorch/pytorch#155333)");
      }
    }
  } catch (const std::exception& e) {
    TORCH_WARN(op, ": cuSPARSELt algorithm search failed for (M, K, N) = (", key.M, ", ", key.K, ", ", key.N,
               "): ", e.what(), "; keeping the default algorithm");
    chosen = AlgChoice{};
  }
  std::lock_guard<std::mutex> lock(g_alg_mutex);
  return g_alg_ids.emplace(key, chosen).first->second;  // a concurrent search keeps the first verdict
}

// How b (K, N) is passed: row-major or column-major view as is, else a contiguous copy.
struct BLayout {
  bool col = false, copy = false;
  int64_t ld = 0;
};
BLayout b_layout(const at::Tensor& b, int64_t K, int64_t N) {
  auto aligned = (reinterpret_cast<uintptr_t>(b.data_ptr()) & 15u) == 0;
  if (b.stride(1) == 1 && b.stride(0) >= N && b.stride(0) % 8 == 0 && aligned) return {false, false, b.stride(0)};
  if (b.stride(0) == 1 && b.stride(1) >= K && b.stride(1) % 8 == 0 && aligned) return {true, false, b.stride(1)};
  return {false, true, N};
}

std::string plan_refusal(const Plan& p, const PlanKey& k) {
  std::ostringstream os;
  os << p.where << " returned " << status_name(p.why) << " for (M, K, N) = (" << k.M << ", " << k.K << ", " << k.N
     << "), " << c10::toString(static_cast<at::ScalarType>(k.dt)) << " -> "
     << c10::toString(static_cast<at::ScalarType>(k.out_dt)) << (k.b_col_major ? ", b column-major" : "")
     << (k.d_col_major ? ", transposed result" : "");
  return os.str();
}

}  // namespace

int64_t compressed_bytes(int64_t M, int64_t K, at::ScalarType dt) {
  return cslt_bytes(M, K, static_cast<int64_t>(c10::elementSize(dt)));
}

std::string static_unsupported_reason(int64_t M, int64_t K, int64_t N, at::ScalarType dt, at::ScalarType out_dt) {
  std::ostringstream os;
  if (dt != at::kHalf && dt != at::kBFloat16) {
    // cuSPARSELt's 50% sparsity for fp32 is 1:2 (TF32), not 2:4.
    os << "cuSPARSELt 2:4 serves float16/bfloat16 only, got " << c10::toString(dt);
  } else if (out_dt != dt) {
    // cuSPARSELt's type table pairs 16F / 16BF inputs only with an output of the same type
    // (a different output type exists for int8 / fp8 inputs only), as PyTorch's _cslt_sparse_mm does.
    os << "cuSPARSELt pairs " << c10::toString(dt) << " inputs only with a " << c10::toString(dt)
       << " output, got out_dtype " << c10::toString(out_dt);
  } else if (M % 16 || K % 16 || N % 16) {
    // Every dimension a multiple of 16 elements keeps rows 16-byte aligned and matches the
    // tile rules of cuSPARSELt 0.8 for 16-bit types.
    os << "M, K, N must be multiples of 16 for cuSPARSELt, got (" << M << ", " << K << ", " << N << ")";
  } else if (M == 0 || K == 0 || N == 0) {
    os << "empty problem";
  }
  return os.str();
}

std::optional<at::Tensor> try_compress(const char* op, const at::Tensor& a, bool sp24_size, std::string* why) {
  TORCH_CHECK(a.is_cuda() && a.dim() == 2 && a.is_contiguous(), op, ": internal error: compress needs a contiguous 2-D CUDA tensor");
  c10::cuda::CUDAGuard guard(a.device());
  const int64_t M = a.size(0), K = a.size(1);
  // "Not for me" answers (GPU, shape, dtype: e.g. cuSPARSELt caps the element count of a matrix)
  // come back as a reason, so that sparse24_mm can fall back instead of raising.
  auto refuse = [&](const char* where, cusparseStatus_t st) -> std::optional<at::Tensor> {
    if (why) {
      std::ostringstream os;
      os << where << " returned " << status_name(st) << " for the (" << M << ", " << K << ") "
         << c10::toString(a.scalar_type()) << " 2:4 operand";
      *why = os.str();
    }
    return std::nullopt;
  };
  cusparseStatus_t s = CUSPARSE_STATUS_SUCCESS;
  auto* h = handle_for(op, a.get_device(), &s);
  if (h == nullptr) return refuse("cusparseLtInit", s);
  // This descriptor must stay identical to matrix A of make_plan (rows M, cols K, ld K, row-major,
  // op N): the compressed layout is defined by it.
  cusparseLtMatDescriptor_t desc;
  s = cusparseLtStructuredDescriptorInit(h, &desc, M, K, K, 16, cuda_type(a.scalar_type()), CUSPARSE_ORDER_ROW,
                                         CUSPARSELT_SPARSITY_50_PERCENT);
  if (s != CUSPARSE_STATUS_SUCCESS && is_unsupported(s)) return refuse("cusparseLtStructuredDescriptorInit", s);
  SP24_CSLT(op, s);
  size_t size = 0, buf_size = 0;
  s = cusparseLtSpMMACompressedSize2(h, &desc, &size, &buf_size);
  if (s != CUSPARSE_STATUS_SUCCESS) {
    cusparseLtMatDescriptorDestroy(&desc);
    // "not for me" here too (e.g. an element count cuSPARSELt caps): the caller's fallback, with why
    if (is_unsupported(s)) return refuse("cusparseLtSpMMACompressedSize2", s);
  }
  SP24_CSLT(op, s);
  const int64_t bytes = sp24_size ? compressed_bytes(M, K, a.scalar_type()) : static_cast<int64_t>(size);
  if (static_cast<int64_t>(size) > bytes) {
    cusparseLtMatDescriptorDestroy(&desc);
    TORCH_CHECK(false, op, ": cuSPARSELt ", version(), " asks for a compressed buffer of ", size,
                " bytes for a (", M, ", ", K, ") ", c10::toString(a.scalar_type()), " matrix, more than the ", bytes,
                " bytes sp24 allocates; this cuSPARSELt version is not supported by sp24.cslt_compress");
  }
  // Zero-filled: any tail past cuSPARSELt's `size` stays deterministic.
  at::Tensor out = at::zeros({bytes}, a.options().dtype(at::kByte));
  at::Tensor tmp = at::empty({static_cast<int64_t>(buf_size)}, a.options().dtype(at::kByte));
  s = cusparseLtSpMMACompress2(h, &desc, 1, CUSPARSE_OPERATION_NON_TRANSPOSE, a.data_ptr(), out.data_ptr(),
                               buf_size ? tmp.data_ptr() : nullptr, at::cuda::getCurrentCUDAStream().stream());
  cusparseLtMatDescriptorDestroy(&desc);
  if (s != CUSPARSE_STATUS_SUCCESS && is_unsupported(s)) return refuse("cusparseLtSpMMACompress2", s);
  SP24_CSLT(op, s);
  return out;
}

std::optional<at::Tensor> try_mm(const char* op, const at::Tensor& compressed, int64_t M, int64_t K,
                                 const at::Tensor& b_in, const std::optional<at::Tensor>& bias,
                                 at::ScalarType out_dtype, bool transpose_result, std::string* why) {
  const int64_t N = b_in.size(1);
  const auto dt = b_in.scalar_type();
  std::string reason = static_unsupported_reason(M, K, N, dt, out_dtype);
  if (!reason.empty()) {
    if (why) *why = reason;
    return std::nullopt;
  }
  c10::cuda::CUDAGuard guard(b_in.device());
  auto is_aligned = [](const at::Tensor& t) { return (reinterpret_cast<uintptr_t>(t.data_ptr()) & 15u) == 0; };
  // Every descriptor promises 16-byte aligned data. The buffer from sparse24_cslt_compress is, but a
  // caller may pass a view into a larger byte tensor at any offset: realign it with a copy.
  const at::Tensor a_buf = is_aligned(compressed) ? compressed : compressed.clone();
  const BLayout bl = b_layout(b_in, K, N);
  const at::Tensor b = bl.copy ? b_in.clone(at::MemoryFormat::Contiguous) : b_in;
  at::Tensor out = transpose_result ? at::empty({N, M}, b.options().dtype(out_dtype))
                                    : at::empty({M, N}, b.options().dtype(out_dtype));
  // Bias (N,) enters as a full C (M, N) with beta = 1: the addition happens in the epilogue, before
  // the single rounding to out_dtype (cuSPARSELt's own bias vector runs along M, not N). Cost: one
  // expanded M x N copy and one extra M x N read (see bench/results/README.md, 'Bias').
  at::Tensor c;
  if (bias.has_value()) {
    auto bv = bias->to(out_dtype);
    c = transpose_result ? bv.view({N, 1}).expand({N, M}).contiguous() : bv.view({1, N}).expand({M, N}).contiguous();
  }
  PlanKey key{b.get_device(), M, K, N, bl.ld, transpose_result ? M : N, static_cast<int>(dt),
              static_cast<int>(out_dtype), bl.col, transpose_result, bias.has_value(), AlgChoice{}};
  cusparseStatus_t hs = CUSPARSE_STATUS_SUCCESS;
  auto* h = handle_for(op, b.get_device(), &hs);
  if (h == nullptr) {
    if (why) *why = std::string("cusparseLtInit returned ") + status_name(hs) + " on this GPU";
    return std::nullopt;
  }
  cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  Plan* p = plan_for(op, h, key);
  if (!p->ok) {
    if (why) *why = plan_refusal(*p, key);
    return std::nullopt;
  }
  if (search_enabled()) {
    key.alg = searched_alg(op, h, key, b.options(), stream);
    p = plan_for(op, h, key);
    TORCH_CHECK(p->ok, op, ": internal error: the verified searched plan could not be rebuilt");
  }
  run_plan(op, h, p, a_buf, b, c.defined() ? &c : nullptr, out, stream);
  return out;
}

std::string mm_refusal(const char* op, int64_t M, int64_t K, const at::Tensor& b, bool with_bias,
                       at::ScalarType out_dtype, bool transpose_result) {
  const int64_t N = b.size(1);
  const auto dt = b.scalar_type();
  std::string reason = static_unsupported_reason(M, K, N, dt, out_dtype);
  if (!reason.empty()) return reason;
  c10::cuda::CUDAGuard guard(b.device());
  const BLayout bl = b_layout(b, K, N);
  PlanKey key{b.get_device(), M, K, N, bl.ld, transpose_result ? M : N, static_cast<int>(dt),
              static_cast<int>(out_dtype), bl.col, transpose_result, with_bias, AlgChoice{}};
  cusparseStatus_t hs = CUSPARSE_STATUS_SUCCESS;
  auto* h = handle_for(op, b.get_device(), &hs);
  if (h == nullptr) return std::string("cusparseLtInit returned ") + status_name(hs) + " on this GPU";
  Plan* p = plan_for(op, h, key);  // cached: try_mm finds it again
  return p->ok ? std::string() : plan_refusal(*p, key);
}

void warn_fallback(const char* op, const std::string& why) {
  // one warning per distinct reason: the reason with its numbers (shapes) left out, so that a
  // token count that changes every call does not warn every call
  std::string key = op;
  key += ':';
  bool in_number = false;
  for (char ch : why) {
    const bool digit = std::isdigit(static_cast<unsigned char>(ch)) != 0;
    if (!digit) key += ch;
    else if (!in_number) key += '#';
    in_number = digit;
  }
  static std::mutex mu;
  static std::set<std::string> seen;
  {
    std::lock_guard<std::mutex> lock(mu);
    if (!seen.insert(key).second) return;
  }
  TORCH_WARN(op, ": cuSPARSELt cannot serve this problem (", why,
             "); using a dense GEMM on the decompressed operand instead (fp32 accumulation, one rounding: the "
             "same contract, no 2:4 speed-up). Warned once per distinct reason.");
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

std::string version_mismatch() {
  const int rt = runtime_version(), hd = header_version();
  std::ostringstream os;
  if (rt < 0) {
    os << "cannot read the loaded cuSPARSELt's version (cusparseLtGetProperty failed)";
  } else if (rt / 1000 != hd / 1000) {
    // same major.minor: the API and the compressed layout sp24 was built for; a newer patch
    // (e.g. 0.8.1 over 0.8.0, same SONAME) is allowed and recorded in every benchmark JSON
    os << "the loaded cuSPARSELt is " << cslt_version_string(rt)
       << " but sp24 was compiled against cuSPARSELt " << version()
       << " headers; rebuild sp24 against the cuSPARSELt that torch loads (pip install --no-build-isolation -e .)";
  }
  return os.str();
}

int64_t device_arch(int device) {
  const auto* prop = at::cuda::getDeviceProperties(device);
  return prop->major * 10 + prop->minor;
}

namespace {
// One check per (device, dtype, M, K): both writers against cusparseLtSpMMACompress, on a synthetic
// operand (never the caller's data: an all-zero first operand would make any byte order look right).
struct ShapeKey {
  int device, dtype;
  int64_t M, K;
  bool operator<(const ShapeKey& o) const {
    return std::tie(device, dtype, M, K) < std::tie(o.device, o.dtype, o.M, o.K);
  }
};
std::mutex direct_mutex;
std::map<ShapeKey, DirectWriters>& direct_checked() {
  static std::map<ShapeKey, DirectWriters> m;
  return m;
}

// A buffer of `bytes` whose part past the values and metadata of an (M, K) 16-bit operand is zero
// (the rest is left to the writer; `poison` pre-fills it with 0xA5 so an unwritten byte shows).
at::Tensor new_buffer(const at::TensorOptions& opts, int64_t M, int64_t K, int64_t bytes, bool poison = false) {
  const int64_t used = M * K + M * K / 8;  // values (M*K/2 16-bit elements) + metadata
  at::Tensor out = poison ? at::full({bytes}, 0xA5, opts.dtype(at::kByte)) : at::empty({bytes}, opts.dtype(at::kByte));
  if (bytes > used) out.narrow(0, used, bytes - used).zero_();
  return out;
}

// pack writer: values copied, metadata written by the layout kernel, zeros after it, `bytes` in all.
at::Tensor write_direct(const at::Tensor& values, const at::Tensor& indices, int64_t bytes) {
  const int64_t M = values.size(0), K = values.size(1) * 2, nv = values.numel() * values.element_size();
  at::Tensor out = new_buffer(values.options(), M, K, bytes);
  out.narrow(0, 0, nv).copy_(values.view(at::kByte).reshape({-1}));
  cslt_meta24_cuda(indices.data_ptr<uint8_t>(), out.data_ptr<uint8_t>() + nv, M, K,
                   at::cuda::getCurrentCUDAStream().stream());
  return out;
}

}  // namespace

at::Tensor write_fused(Sparsify24Params p, const at::TensorOptions& opts, int64_t bytes, bool poison) {
  at::Tensor buf = new_buffer(opts, p.M, p.K, bytes, poison);
  p.values = buf.data_ptr();
  p.cslt_meta = buf.data_ptr<uint8_t>() + p.M * p.K;  // after the M*K/2 16-bit values
  sparsify24_cuda(p, at::cuda::getCurrentCUDAStream().stream());
  return buf;
}

namespace {
DType kernel_dtype(at::ScalarType t) { return t == at::kHalf ? DType::kFloat16 : DType::kBFloat16; }

DirectWriters run_check(const char* op, const at::Tensor& like, int64_t M, int64_t K) {
  void* stream = at::cuda::getCurrentCUDAStream().stream();
  auto gen = at::cuda::detail::createCUDAGenerator(like.get_device());  // private: the user's RNG is untouched
  gen.set_current_seed(0x5eed24);
  const auto opts = like.options();
  // randn has no exact zeros, so every kept value is non-zero: cuSPARSELt has no choice of which
  // zero positions to encode, and equal bytes mean the same layout.
  at::Tensor x = at::randn({M, K}, gen, opts);
  at::Tensor values = at::empty({M, K / 2}, opts), indices = at::empty({M, K / 2}, opts.dtype(at::kByte));
  Sparsify24Params p;
  p.x = x.data_ptr();
  p.x_row_stride = K;
  p.values = values.data_ptr();
  p.indices = indices.data_ptr<uint8_t>();
  p.M = M;
  p.K = K;
  p.dtype = kernel_dtype(like.scalar_type());
  sparsify24_cuda(p, stream);
  std::optional<at::Tensor> ref;
  {
    at::Tensor dense = at::empty({M, K}, opts);
    ToDense24Params d;
    d.values = values.data_ptr();
    d.indices = indices.data_ptr<uint8_t>();
    d.out = dense.data_ptr();
    d.M = M;
    d.K = K;
    d.dtype = p.dtype;
    to_dense24_cuda(d, stream);
    std::string why;
    ref = try_compress(op, dense, false, &why);
  }  // dense freed before the writers run (peak memory of the check)
  DirectWriters r;
  if (!ref.has_value()) return r;  // cuSPARSELt takes no such operand: nothing to match
  r.bytes = ref->numel();
  const int64_t nv = values.numel() * values.element_size(), nm = M * K / 8;
  if (r.bytes < nv + nm) return r;
  {
    // fused writer, into a poisoned buffer (a byte the kernel does not write cannot pass as a zero)
    at::Tensor idx2 = at::empty_like(indices);
    Sparsify24Params q = p;
    q.indices = idx2.data_ptr<uint8_t>();
    at::Tensor buf = write_fused(q, opts, r.bytes, /*poison=*/true);
    r.fused = at::equal(buf, *ref) && at::equal(idx2, indices);
  }
  x.reset();
  r.pack = at::equal(write_direct(values, indices, r.bytes), *ref);
  return r;
}
}  // namespace

bool direct_allowed(const at::Tensor& like, int64_t M, int64_t K) {
  const char* e = std::getenv("SP24_CSLT_DIRECT");
  if (e != nullptr && std::string(e) == "0") return false;
  const auto dt = like.scalar_type();
  // The candidate layout is the sm_90 one (Ampere's differs): other GPUs always use cuSPARSELt's compression.
  return (dt == at::kHalf || dt == at::kBFloat16) && cslt_layout_domain(M, K) &&
         at::cuda::getDeviceProperties(like.get_device())->major == 9;
}

std::optional<DirectWriters> direct_writers(const char* op, const at::Tensor& like, int64_t M, int64_t K) {
  const ShapeKey key{like.get_device(), static_cast<int>(like.scalar_type()), M, K};
  {
    std::lock_guard<std::mutex> lock(direct_mutex);
    auto it = direct_checked().find(key);
    if (it != direct_checked().end()) return it->second;
  }
  // The check synchronises (at::equal): never inside a CUDA graph capture; cuSPARSELt serves meanwhile.
  if (c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None) return std::nullopt;
  DirectWriters r;
  try {
    r = run_check(op, like, M, K);
  } catch (const std::exception& e) {  // e.g. out of memory: keep cuSPARSELt's compression for this shape
    TORCH_WARN(op, ": the check of sp24's direct cuSPARSELt layout writers failed for (", M, ", ", K, ") ",
               c10::toString(like.scalar_type()), " (", e.what(), "); cuSPARSELt compresses this shape");
    r = DirectWriters{};
  }
  {
    std::lock_guard<std::mutex> lock(direct_mutex);
    auto [it, fresh] = direct_checked().emplace(key, r);
    if (!fresh) return it->second;  // another thread checked this key meanwhile: keep its verdict
  }
  if (r.bytes > 0 && !(r.pack && r.fused)) {
    TORCH_WARN(op, ": sp24's direct writers of cuSPARSELt's compressed layout (sp24/cslt_layout.h) do not reproduce ",
               "cusparseLtSpMMACompress (cuSPARSELt ", version(), ") for (", M, ", ", K, ") ",
               c10::toString(like.scalar_type()), " operands (pack writer ", r.pack ? "matches" : "differs",
               ", fused sparsify writer ", r.fused ? "matches" : "differs",
               "); cuSPARSELt compresses where they differ (results are unaffected, only slower)");
  }
  return r;
}

std::optional<at::Tensor> try_compress_sp24(const char* op, const at::Tensor& values, const at::Tensor& indices,
                                            const std::function<at::Tensor()>& dense, bool sp24_size,
                                            std::string* why) {
  c10::cuda::CUDAGuard guard(values.device());
  const int64_t M = values.size(0), K = values.size(1) * 2;
  if (direct_allowed(values, M, K) && values.is_contiguous() && indices.is_contiguous()) {
    const int64_t want = compressed_bytes(M, K, values.scalar_type());
    auto w = direct_writers(op, values, M, K);
    if (w.has_value() && w->pack && w->bytes <= want) return write_direct(values, indices, sp24_size ? want : w->bytes);
  }
  return try_compress(op, dense(), sp24_size, why);
}

std::vector<DirectLayoutCheck> direct_layout_checks() {
  std::lock_guard<std::mutex> lock(direct_mutex);
  std::vector<DirectLayoutCheck> out;
  for (const auto& [k, w] : direct_checked()) {
    const std::string dt = c10::toString(static_cast<at::ScalarType>(k.dtype));
    out.push_back({"pack", k.device, dt, k.M, k.K, w.bytes, w.pack});
    out.push_back({"fused_sparsify", k.device, dt, k.M, k.K, w.bytes, w.fused});
  }
  return out;
}

std::string version() {
  std::ostringstream os;
  os << SP24_CSLT_MAJOR << "." << SP24_CSLT_MINOR << "." << SP24_CSLT_PATCH;
  return os.str();
}

}  // namespace cslt
}  // namespace sp24
