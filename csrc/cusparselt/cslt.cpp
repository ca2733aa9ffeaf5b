// cuSPARSELt wrapper (see cslt.h for the design).
#include "cusparselt/cslt.h"
#include "cusparselt/version.h"
#include "sp24/cslt_layout.h"
#include "sp24/params.h"

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/Exception.h>
#include <cusparseLt.h>

#include <cstdlib>
#include <map>
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

// Statuses with which cuSPARSELt says "this problem is not for me" (shape, dtype or layout).
// ARCH_MISMATCH: cuSPARSELt refuses the GPU itself (e.g. no sparse tensor cores); sparse24_mm then
// falls back to a dense GEMM instead of failing.
bool is_unsupported(cusparseStatus_t s) {
  return s == CUSPARSE_STATUS_NOT_SUPPORTED || s == CUSPARSE_STATUS_INVALID_VALUE ||
         s == CUSPARSE_STATUS_ARCH_MISMATCH;
}

cudaDataType cuda_type(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return CUDA_R_16F;
    case at::kBFloat16: return CUDA_R_16BF;
    default: return CUDA_R_32F;
  }
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
cusparseLtHandle_t* handle_for(const char* op, int device, cusparseStatus_t* unsupported = nullptr) {
  thread_local ThreadHandles th;
  auto it = th.by_device.find(device);
  if (it != th.by_device.end()) return it->second;
  // Freed again when cusparseLtInit fails (the old code leaked it before raising).
  auto h = std::make_unique<cusparseLtHandle_t>();
  const cusparseStatus_t s = cusparseLtInit(h.get());
  if (s != CUSPARSE_STATUS_SUCCESS && unsupported != nullptr && is_unsupported(s)) {
    *unsupported = s;
    return nullptr;
  }
  SP24_CSLT(op, s);
  return th.by_device.emplace(device, h.release()).first->second;
}

// ---- plan cache (per thread: plans belong to a handle) -------------------------------------------
struct PlanKey {
  int device;
  int64_t M, K, N, ldb, ldd;
  int dt, out_dt;
  bool b_col_major, d_col_major, with_c;
  int alg_id;
  auto tie() const {
    return std::tie(device, M, K, N, ldb, ldd, dt, out_dt, b_col_major, d_col_major, with_c, alg_id);
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
  if (k.alg_id >= 0) {
    int id = k.alg_id;
    s = cusparseLtMatmulAlgSetAttribute(h, &p->alg, CUSPARSELT_MATMUL_ALG_CONFIG_ID, &id, sizeof(id));
    if (s != CUSPARSE_STATUS_SUCCESS) {
      cusparseLtMatmulAlgSelectionDestroy(&p->alg);
      destroy_descs();
      return fail(s, "cusparseLtMatmulAlgSetAttribute(CONFIG_ID)");
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

// ---- algorithm search (opt-in), process-wide chosen ids --------------------------------------------
bool search_enabled() {
  const char* e = std::getenv("SP24_CSLT_SEARCH");
  return e != nullptr && e[0] != '\0' && std::string(e) != "0";
}

std::mutex g_alg_mutex;
std::map<PlanKey, int> g_alg_ids;  // key with alg_id = -1 -> chosen id

void run_plan(const char* op, cusparseLtHandle_t* h, Plan* p, const at::Tensor& compressed, const at::Tensor& b,
              const at::Tensor* c, at::Tensor& out, cudaStream_t stream) {
  const float alpha = 1.f, beta = c ? 1.f : 0.f;
  at::Tensor ws = at::empty({static_cast<int64_t>(p->workspace)}, b.options().dtype(at::kByte));
  cudaStream_t streams[1] = {stream};
  SP24_CSLT(op, cusparseLtMatmul(h, &p->plan, &alpha, compressed.data_ptr(), b.data_ptr(), &beta,
                                 c ? c->data_ptr() : out.data_ptr(), out.data_ptr(),
                                 p->workspace ? ws.data_ptr() : nullptr, streams, 1));
}

// Search once for this key; returns the id to use (-1: the default).
int searched_alg_id(const char* op, cusparseLtHandle_t* h, const PlanKey& key, const at::Tensor& compressed,
                    const at::Tensor& b, const at::Tensor* c, const at::Tensor& out, cudaStream_t stream) {
  {
    std::lock_guard<std::mutex> lock(g_alg_mutex);
    auto it = g_alg_ids.find(key);
    if (it != g_alg_ids.end()) return it->second;
  }
  int chosen = -1;
  Plan* def = plan_for(op, h, key);
  if (def->ok) {
    at::Tensor ref = at::empty_like(out);
    run_plan(op, h, def, compressed, b, c, ref, stream);
    // Search on a fresh, private plan (search rewrites its algorithm selection).
    auto sp = make_plan(op, h, key);
    if (sp->ok) {
      at::Tensor tmp = at::empty_like(out);
      at::Tensor ws = at::empty({static_cast<int64_t>(sp->workspace)}, b.options().dtype(at::kByte));
      const float alpha = 1.f, beta = c ? 1.f : 0.f;
      cudaStream_t streams[1] = {stream};
      SP24_CSLT(op, cusparseLtMatmulSearch(h, &sp->plan, &alpha, compressed.data_ptr(), b.data_ptr(), &beta,
                                           c ? c->data_ptr() : tmp.data_ptr(), tmp.data_ptr(),
                                           sp->workspace ? ws.data_ptr() : nullptr, streams, 1));
      int id = 0;
      SP24_CSLT(op, cusparseLtMatmulAlgGetAttribute(h, &sp->alg, CUSPARSELT_MATMUL_ALG_CONFIG_ID, &id, sizeof(id)));
      PlanKey ck = key;
      ck.alg_id = id;
      Plan* cp = plan_for(op, h, ck);
      if (cp->ok) {
        at::Tensor got = at::empty_like(out);
        run_plan(op, h, cp, compressed, b, c, got, stream);
        // Both results use fp32 accumulation; a different split of K may change the last bits,
        // a wrong kernel changes far more (#155333 reported garbage).
        // Non-finite entries (NaN/Inf in the inputs) must sit at the same places in both results
        // and are left out of the error, which would otherwise be NaN and reject every id.
        const auto r = ref.to(at::kFloat), g = got.to(at::kFloat);
        const auto rf = r.isfinite();
        const bool finite = at::equal(rf, g.isfinite());
        const double scale = r.abs().masked_fill(rf.logical_not(), 0).max().item<double>();
        const double err = (r - g).abs().masked_fill(rf.logical_not(), 0).max().item<double>();
        const double tol = 1e-2 * scale + 1e-3;
        if (finite && err <= tol) {
          chosen = id;
        } else {
          TORCH_WARN(op, ": cuSPARSELt algorithm id ", id, " chosen by search for (M, K, N) = (", key.M, ", ", key.K,
                     ", ", key.N, ") disagrees with the default algorithm (max abs diff ", err, ", allowed ", tol,
                     "); keeping the default (see pytorch/pytorch#155333)");
        }
      }
    }
  }
  std::lock_guard<std::mutex> lock(g_alg_mutex);
  g_alg_ids[key] = chosen;
  return chosen;
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
  } else if (out_dt != dt && out_dt != at::kFloat) {
    os << "out_dtype " << c10::toString(out_dt) << " with inputs of " << c10::toString(dt);
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
  if (s != CUSPARSE_STATUS_SUCCESS) cusparseLtMatDescriptorDestroy(&desc);
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
  // B: row-major or column-major view as is; anything else (or misaligned) gets a contiguous copy.
  at::Tensor b = b_in;
  bool b_col = false;
  int64_t ldb = N;
  if (b.stride(1) == 1 && b.stride(0) >= N && b.stride(0) % 8 == 0 && is_aligned(b)) {
    ldb = b.stride(0);
  } else if (b.stride(0) == 1 && b.stride(1) >= K && b.stride(1) % 8 == 0 && is_aligned(b)) {
    b_col = true;
    ldb = b.stride(1);
  } else {
    b = b_in.clone(at::MemoryFormat::Contiguous);
    ldb = N;
  }
  at::Tensor out = transpose_result ? at::empty({N, M}, b.options().dtype(out_dtype))
                                    : at::empty({M, N}, b.options().dtype(out_dtype));
  // Bias (N,) enters as C with beta = 1: the addition happens in the epilogue, before the single
  // rounding to out_dtype (cuSPARSELt's own bias vector runs along M, not N).
  at::Tensor c;
  if (bias.has_value()) {
    auto bv = bias->to(out_dtype);
    c = transpose_result ? bv.view({N, 1}).expand({N, M}).contiguous() : bv.view({1, N}).expand({M, N}).contiguous();
  }
  PlanKey key{b.get_device(), M, K, N, ldb, transpose_result ? M : N, static_cast<int>(dt),
              static_cast<int>(out_dtype), b_col, transpose_result, bias.has_value(), -1};
  cusparseStatus_t hs = CUSPARSE_STATUS_SUCCESS;
  auto* h = handle_for(op, b.get_device(), &hs);
  if (h == nullptr) {
    if (why) *why = std::string("cusparseLtInit returned ") + status_name(hs);
    return std::nullopt;
  }
  cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  if (search_enabled()) key.alg_id = searched_alg_id(op, h, key, a_buf, b, c.defined() ? &c : nullptr, out, stream);
  Plan* p = plan_for(op, h, key);
  if (!p->ok) {
    if (why) {
      std::ostringstream os;
      os << p->where << " returned " << status_name(p->why) << " for (M, K, N) = (" << M << ", " << K << ", " << N
         << "), " << c10::toString(dt) << " -> " << c10::toString(out_dtype) << (b_col ? ", b column-major" : "")
         << (transpose_result ? ", transposed result" : "");
      *why = os.str();
    }
    return std::nullopt;
  }
  run_plan(op, h, p, a_buf, b, c.defined() ? &c : nullptr, out, stream);
  return out;
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
