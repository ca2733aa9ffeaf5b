// torch glue over the cuSPARSELt core (core.h): tensors to pointers, torch's allocator and current
// stream, statuses to torch errors or fallbacks, and the check of a searched algorithm.
#include "cusparselt/cslt.h"
#include "cusparselt/core.h"
#include "sp24/cslt_layout.h"

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/Exception.h>

#include <cctype>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <vector>

namespace sp24 {
namespace cslt {

bool is_unsupported(int status) { return core::is_unsupported(static_cast<cusparseStatus_t>(status)); }

namespace {

core::Type core_type(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return core::Type::kF16;
    case at::kBFloat16: return core::Type::kBF16;
    case at::kFloat8_e4m3fn: return core::Type::kE4M3;
    default: return core::Type::kF32;
  }
}

[[noreturn]] void raise(const char* op, const core::Status& s) {
  TORCH_CHECK(false, op, ": cuSPARSELt ", s.where, " failed with ", core::status_name(s.code), " (",
              core::status_string(s.code), ")");
}

// SUCCESS: false. An unsupported status: true, with *why = "<call> returned <NAME><suffix>" (the
// caller falls back). Any other status raises.
bool refused(const char* op, const core::Status& s, std::string* why, const std::string& suffix) {
  if (s.ok()) return false;
  if (!core::is_unsupported(s.code)) raise(op, s);
  if (why) *why = s.text() + suffix;
  return true;
}

// The library that is loaded must be the one sp24 was compiled against.
void check_runtime_version(const char* op) {
  static const std::string problem = core::version_mismatch();
  TORCH_CHECK(problem.empty(), op, ": ", problem);
}

// This thread's handle for `device` (the caller holds a CUDAGuard for it); nullptr with *st set
// when cuSPARSELt refuses this GPU; any other failure raises.
cusparseLtHandle_t* handle(const char* op, int device, core::Status* st) {
  check_runtime_version(op);
  cusparseLtHandle_t* h = core::thread_handle(device, st);
  if (h == nullptr && !core::is_unsupported(st->code)) raise(op, *st);
  return h;
}

bool search_enabled() {
  const char* e = std::getenv("SP24_CSLT_SEARCH");
  return e != nullptr && e[0] != '\0' && std::string(e) != "0";
}

std::mutex g_alg_mutex;
std::map<core::MmProblem, core::AlgChoice> g_alg_ids;  // problem with the default AlgChoice -> chosen

void run_plan(const char* op, const core::Plan& p, const at::Tensor& a_buf, const at::Tensor& b, const at::Tensor* c,
              at::Tensor& out, cudaStream_t stream) {
  at::Tensor ws = at::empty({static_cast<int64_t>(p.workspace)}, b.options().dtype(at::kByte));
  core::MmArgs args;
  args.a = a_buf.data_ptr();
  args.b = b.data_ptr();
  args.c = c ? c->data_ptr() : nullptr;
  args.d = out.data_ptr();
  args.workspace = p.workspace ? ws.data_ptr() : nullptr;
  args.stream = stream;
  const core::Status s = core::matmul(p, args);
  if (!s.ok()) raise(op, s);
}

// Synthetic operands for a problem, from a private generator (the caller's data and RNG are never
// used: an all-zero operand would approve any algorithm). Entries are small integers, so every
// correct algorithm -- whatever its split of K -- computes the same exact fp32 sums and therefore
// the same bits: a candidate is compared with the default algorithm by at::equal.
struct Synthetic {
  at::Tensor a_buf, b, c, out;
};

at::ScalarType scalar_type(core::Type t) {
  return t == core::Type::kF16 ? at::kHalf : t == core::Type::kBF16 ? at::kBFloat16 : at::kFloat;
}

Synthetic synthetic_operands(const char* op, const core::MmProblem& k, const at::TensorOptions& opts, uint64_t seed) {
  auto gen = at::cuda::detail::createCUDAGenerator(k.device);
  gen.set_current_seed(seed);
  const auto dt = scalar_type(k.ab), odt = scalar_type(k.out);
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
  // B (K, N) with the problem's layout and leading dimension; entries in [-1, 1]
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

// cusparseLtMatmulSearch on a private plan for `key`: the chosen algorithm, read back and
// normalised by the core. Raises on any failure (the caller keeps the default then).
core::AlgChoice run_search(const char* op, cusparseLtHandle_t* h, const core::MmProblem& key, const Synthetic& s,
                           cudaStream_t stream) {
  auto sp = core::make_plan(h, key);  // fresh: search rewrites its algorithm selection
  TORCH_CHECK(sp->ok(), op, ": ", sp->why.text(), " for the search plan");
  at::Tensor tmp = at::empty_like(s.out);
  at::Tensor ws = at::empty({static_cast<int64_t>(sp->workspace)}, s.b.options().dtype(at::kByte));
  core::MmArgs args;
  args.a = s.a_buf.data_ptr();
  args.b = s.b.data_ptr();
  args.c = s.c.defined() ? s.c.data_ptr() : nullptr;
  args.d = tmp.data_ptr();
  args.workspace = sp->workspace ? ws.data_ptr() : nullptr;
  args.stream = stream;
  core::AlgChoice c;
  bool bad_id = false;
  int max_id = 0;
  const core::Status st = core::search(*sp, args, &c, &bad_id, &max_id);
  if (!st.ok()) raise(op, st);
  TORCH_CHECK(!bad_id, op, ": cusparseLtMatmulSearch chose algorithm id ", c.id, ", outside [0, CONFIG_MAX_ID = ", max_id,
              ")");
  return c;
}

constexpr int kSearchChecks = 3;  // synthetic operands a searched algorithm must reproduce

// The algorithm for this problem: searched once per problem and process, verified on
// kSearchChecks seeded synthetic operands against the default algorithm (cuSPARSELt has returned
// wrong results for some ids, intermittently: pytorch/pytorch#155333). Never during a CUDA graph
// capture (search and the check synchronise): the default serves a capture, and the search
// happens on the next eager call. Any failure keeps the default, with a warning.
core::AlgChoice searched_alg(const char* op, cusparseLtHandle_t* h, const core::MmProblem& key,
                             const at::TensorOptions& opts, cudaStream_t stream) {
  {
    std::lock_guard<std::mutex> lock(g_alg_mutex);
    auto it = g_alg_ids.find(key);
    if (it != g_alg_ids.end()) return it->second;
  }
  if (c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None) return core::AlgChoice{};
  core::AlgChoice chosen;
  try {
    // private plans, not the per-thread cache: a cache eviction in between cannot free them
    auto def = core::make_plan(h, key);
    if (def->ok()) {
      const Synthetic s0 = synthetic_operands(op, key, opts, 0x5eed0);
      const core::AlgChoice cand = run_search(op, h, key, s0, stream);
      core::MmProblem ck = key;
      ck.alg = cand;
      auto cp = core::make_plan(h, ck);
      TORCH_CHECK(cp->ok(), op, ": ", cp->why.text(), " for the searched algorithm");
      int agreed = 0;
      for (int t = 0; t < kSearchChecks; ++t) {
        const Synthetic s = t == 0 ? s0 : synthetic_operands(op, key, opts, 0x5eed0 + t);
        at::Tensor ref = at::empty_like(s.out), got = at::empty_like(s.out);
        run_plan(op, *def, s.a_buf, s.b, s.c.defined() ? &s.c : nullptr, ref, stream);
        run_plan(op, *cp, s.a_buf, s.b, s.c.defined() ? &s.c : nullptr, got, stream);
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
    chosen = core::AlgChoice{};
  }
  std::lock_guard<std::mutex> lock(g_alg_mutex);
  return g_alg_ids.emplace(key, chosen).first->second;  // a concurrent search keeps the first verdict
}

// The problem of A (M, K) @ b as the core states it, with b's layout.
core::MmProblem problem_for(int64_t M, int64_t K, const at::Tensor& b, const core::BLayout& bl, bool with_bias,
                            at::ScalarType out_dtype, bool transpose_result) {
  core::MmProblem k;
  k.device = b.get_device();
  k.M = M;
  k.K = K;
  k.N = b.size(1);
  k.ldb = bl.ld;
  k.ldd = transpose_result ? M : k.N;
  k.ab = core_type(b.scalar_type());
  k.out = core_type(out_dtype);
  k.b_col_major = bl.col;
  k.d_col_major = transpose_result;
  k.with_c = with_bias;
  return k;
}

// The cached plan for k: nullptr with *why when cuSPARSELt refuses the problem or the GPU.
core::Plan* plan_or_refusal(const char* op, const core::MmProblem& k, cusparseLtHandle_t** h_out, std::string* why) {
  core::Status hs;
  cusparseLtHandle_t* h = handle(op, k.device, &hs);
  if (h == nullptr) {
    if (why) *why = hs.text() + " on this GPU";
    return nullptr;
  }
  core::Plan* p = core::cached_plan(h, k);
  if (refused(op, p->why, why, " for " + k.describe())) return nullptr;
  *h_out = h;
  return p;
}

}  // namespace

int64_t compressed_bytes(int64_t M, int64_t K, at::ScalarType dt) {
  return cslt_bytes(M, K, static_cast<int64_t>(c10::elementSize(dt)));
}

std::string static_unsupported_reason(int64_t M, int64_t K, int64_t N, at::ScalarType dt, at::ScalarType out_dt) {
  return core::static_refusal(M, K, N, core_type(dt), core_type(out_dt));
}

std::optional<at::Tensor> try_compress(const char* op, const at::Tensor& a, bool sp24_size, std::string* why) {
  TORCH_CHECK(a.is_cuda() && a.dim() == 2 && a.is_contiguous(), op,
              ": internal error: compress needs a contiguous 2-D CUDA tensor");
  c10::cuda::CUDAGuard guard(a.device());
  const int64_t M = a.size(0), K = a.size(1);
  // "Not for me" answers (GPU, shape, dtype: e.g. cuSPARSELt caps the element count of a matrix)
  // come back as a reason, so that sparse24_mm can fall back instead of raising.
  std::ostringstream os;
  os << " for the (" << M << ", " << K << ") " << c10::toString(a.scalar_type()) << " 2:4 operand";
  const std::string suffix = os.str();
  core::Status hs;
  cusparseLtHandle_t* h = handle(op, a.get_device(), &hs);
  if (h == nullptr) {
    refused(op, hs, why, suffix);
    return std::nullopt;
  }
  core::StructuredOperand desc(h, M, K, core_type(a.scalar_type()));
  if (refused(op, desc.status(), why, suffix)) return std::nullopt;
  size_t size = 0, buf_size = 0;
  if (refused(op, desc.sizes(&size, &buf_size), why, suffix)) return std::nullopt;
  const int64_t bytes = sp24_size ? compressed_bytes(M, K, a.scalar_type()) : static_cast<int64_t>(size);
  TORCH_CHECK(static_cast<int64_t>(size) <= bytes, op, ": cuSPARSELt ", version(), " asks for a compressed buffer of ",
              size, " bytes for a (", M, ", ", K, ") ", c10::toString(a.scalar_type()), " matrix, more than the ", bytes,
              " bytes sp24 allocates; this cuSPARSELt version is not supported by sp24.cslt_compress");
  // Zero-filled: any tail past cuSPARSELt's `size` stays deterministic.
  at::Tensor out = at::zeros({bytes}, a.options().dtype(at::kByte));
  at::Tensor tmp = at::empty({static_cast<int64_t>(buf_size)}, a.options().dtype(at::kByte));
  const core::Status s = desc.compress(a.data_ptr(), out.data_ptr(), buf_size ? tmp.data_ptr() : nullptr,
                                       at::cuda::getCurrentCUDAStream().stream());
  if (refused(op, s, why, suffix)) return std::nullopt;
  return out;
}

std::optional<at::Tensor> try_mm(const char* op, const at::Tensor& compressed, int64_t M, int64_t K,
                                 const at::Tensor& b_in, const std::optional<at::Tensor>& bias,
                                 at::ScalarType out_dtype, bool transpose_result, std::string* why) {
  const int64_t N = b_in.size(1);
  std::string reason = static_unsupported_reason(M, K, N, b_in.scalar_type(), out_dtype);
  if (!reason.empty()) {
    if (why) *why = reason;
    return std::nullopt;
  }
  c10::cuda::CUDAGuard guard(b_in.device());
  // Every descriptor promises 16-byte aligned data. The buffer from sparse24_cslt_compress is, but a
  // caller may pass a view into a larger byte tensor at any offset: realign it with a copy.
  const at::Tensor a_buf = core::aligned16(compressed.data_ptr()) ? compressed : compressed.clone();
  const core::BLayout bl = core::b_layout(b_in.data_ptr(), b_in.stride(0), b_in.stride(1), K, N);
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
  core::MmProblem key = problem_for(M, K, b, bl, bias.has_value(), out_dtype, transpose_result);
  cusparseLtHandle_t* h = nullptr;
  core::Plan* p = plan_or_refusal(op, key, &h, why);
  if (p == nullptr) return std::nullopt;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  if (search_enabled()) {
    key.alg = searched_alg(op, h, key, b.options(), stream);
    p = core::cached_plan(h, key);
    TORCH_CHECK(p->ok(), op, ": internal error: the verified searched plan could not be rebuilt: ", p->why.text());
  }
  run_plan(op, *p, a_buf, b, c.defined() ? &c : nullptr, out, stream);
  return out;
}

std::optional<at::Tensor> try_fp8_mm(const char* op, const at::Tensor& a_dense, const at::Tensor& b_in,
                                     const at::Tensor& alpha, const at::Tensor* c, at::ScalarType out_dtype,
                                     std::string* why) {
  const int64_t M = a_dense.size(0), K = a_dense.size(1), N = b_in.size(1);
  const std::string reason = static_unsupported_reason(M, K, N, at::kFloat8_e4m3fn, out_dtype);
  if (!reason.empty()) {
    if (why) *why = reason;
    return std::nullopt;
  }
  c10::cuda::CUDAGuard guard(b_in.device());
  TORCH_CHECK(b_in.stride(0) == 1 && b_in.stride(1) == K, op, ": internal error: the FP8 GEMM needs a K-major b");
  // every pointer cuSPARSELt reads must be 16-byte aligned: a view at an offset is copied (a fresh
  // tensor from torch's allocator is aligned)
  const at::Tensor b = core::aligned16(b_in.data_ptr()) ? b_in : b_in.t().clone().t();
  // the plan (or its refusal) before compressing: a refused problem does not pay for a compression
  const core::MmProblem key = core::fp8_problem(b.get_device(), M, K, N, core_type(out_dtype), c != nullptr);
  cusparseLtHandle_t* h = nullptr;
  core::Plan* p = plan_or_refusal(op, key, &h, why);
  if (p == nullptr) return std::nullopt;
  std::optional<at::Tensor> a_buf = try_compress(op, a_dense, false, why);
  if (!a_buf.has_value()) return std::nullopt;
  p = core::cached_plan(h, key);  // try_compress made no plan: still the cached one
  // fresh tensors from torch's allocator are 16-byte aligned, as the vectors must be
  const at::Tensor av = alpha.is_contiguous() && core::aligned16(alpha.data_ptr()) ? alpha : alpha.clone();
  const at::Tensor bv = c != nullptr ? at::ones({M}, alpha.options()) : at::Tensor();
  at::Tensor out = at::empty({M, N}, b.options().dtype(out_dtype));
  at::Tensor ws = at::empty({static_cast<int64_t>(p->workspace)}, b.options().dtype(at::kByte));
  core::MmArgs args;
  args.a = a_buf->data_ptr();
  args.b = b.data_ptr();
  args.c = c != nullptr ? c->data_ptr() : nullptr;
  args.d = out.data_ptr();
  args.alpha = av.data_ptr<float>();
  args.beta = bv.defined() ? bv.data_ptr<float>() : nullptr;
  args.workspace = p->workspace ? ws.data_ptr() : nullptr;
  args.stream = at::cuda::getCurrentCUDAStream().stream();
  const core::Status s = core::matmul(*p, args);
  if (!s.ok()) raise(op, s);
  return out;
}

std::string mm_refusal(const char* op, int64_t M, int64_t K, const at::Tensor& b, bool with_bias,
                       at::ScalarType out_dtype, bool transpose_result) {
  std::string reason = static_unsupported_reason(M, K, b.size(1), b.scalar_type(), out_dtype);
  if (!reason.empty()) return reason;
  c10::cuda::CUDAGuard guard(b.device());
  const core::BLayout bl = core::b_layout(b.data_ptr(), b.stride(0), b.stride(1), K, b.size(1));
  cusparseLtHandle_t* h = nullptr;
  std::string why;
  // cached: try_mm finds the plan again
  return plan_or_refusal(op, problem_for(M, K, b, bl, with_bias, out_dtype, transpose_result), &h, &why) ? std::string()
                                                                                                          : why;
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

int runtime_version() { return core::runtime_version(); }
int header_version() { return core::header_version(); }
std::string version_mismatch() { return core::version_mismatch(); }
std::string version() { return core::version(); }

int64_t device_arch(int device) {
  const auto* prop = at::cuda::getDeviceProperties(device);
  return prop->major * 10 + prop->minor;
}

}  // namespace cslt
}  // namespace sp24
