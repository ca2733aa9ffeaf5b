// Plain C entry points that run sp24's cuSPARSELt call sequences through the torch-free core
// (csrc/cusparselt/core.cpp), linked against the contract test double of the cuSPARSELt API
// (csrc/emu/cusparselt/) instead of the real library. tests/emu/cslt.py loads the library with
// ctypes and passes pointers to CPU tensors (the double's "device memory" is host memory).
//
// Each entry point makes the calls the torch glue (csrc/cusparselt/cslt.cpp) makes for the same
// request, in the same order, with the same decisions taken by the same core functions
// (static_refusal, b_layout, aligned16, cached_plan, search); where the glue allocates with torch,
// this file allocates 16-byte aligned host memory. Return value: 0 done, 1 error (the glue raises),
// 2 refused (the glue falls back to its dense GEMM); `err` gets the reason and, when the double saw
// a broken rule, the rule.
// A TEST TOOL: nothing in the sp24 package links or loads it.
#include "cusparselt/core.h"
#include "emu/cusparselt/control.h"

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace core = sp24::cslt::core;

namespace {

constexpr int kDone = 0, kError = 1, kRefused = 2;
thread_local int g_violations_before = 0;  // the double's count when this entry point started

struct Aligned {
  void* p = nullptr;
  explicit Aligned(size_t bytes) {
    const size_t n = (bytes + 15) / 16 * 16;
    p = std::aligned_alloc(16, n ? n : 16);
    std::memset(p, 0, n ? n : 16);
  }
  ~Aligned() { std::free(p); }
  Aligned(const Aligned&) = delete;
  Aligned& operator=(const Aligned&) = delete;
};

int finish(int code, const std::string& msg, char* err, int64_t len) {
  std::string m = msg;
  const char* v = sp24dbl_last_violation();
  if (code != kDone && sp24dbl_violations() > g_violations_before && v != nullptr && v[0] != '\0') {
    m += " [double: " + std::string(v) + "]";
  }
  if (err != nullptr && len > 0) {
    std::strncpy(err, m.c_str(), static_cast<size_t>(len - 1));
    err[len - 1] = '\0';
  }
  return code;
}

// The glue's decision for a failed status: refused (fall back) or error (raise).
int status_code(const core::Status& s) { return core::is_unsupported(s.code) ? kRefused : kError; }

core::Type type_of(int t) { return static_cast<core::Type>(t); }

// try_compress (cslt.cpp): handle, descriptor, sizes, compress into a zeroed buffer.
int compress(int device, int type, int64_t M, int64_t K, const void* dense, int sp24_size, int64_t sp24_bytes,
             std::vector<unsigned char>* out, char* err, int64_t len) {
  const std::string suffix = " for the (" + std::to_string(M) + ", " + std::to_string(K) + ") 2:4 operand";
  const std::string mismatch = core::version_mismatch();
  if (!mismatch.empty()) return finish(kError, mismatch, err, len);
  core::Status st;
  cusparseLtHandle_t* h = core::thread_handle(device, &st);
  if (h == nullptr) return finish(status_code(st), st.text(true) + suffix, err, len);
  core::StructuredOperand desc(h, M, K, type_of(type));
  if (!desc.status().ok()) return finish(status_code(desc.status()), desc.status().text(true) + suffix, err, len);
  size_t size = 0, scratch = 0;
  st = desc.sizes(&size, &scratch);
  if (!st.ok()) return finish(status_code(st), st.text(true) + suffix, err, len);
  const int64_t bytes = sp24_size ? sp24_bytes : static_cast<int64_t>(size);
  if (static_cast<int64_t>(size) > bytes) {
    return finish(kError, "cuSPARSELt asks for " + std::to_string(size) + " bytes, more than the " +
                              std::to_string(bytes) + " bytes sp24 allocates", err, len);
  }
  Aligned buf(static_cast<size_t>(bytes)), tmp(scratch);
  st = desc.compress(dense, buf.p, scratch ? tmp.p : nullptr, nullptr);
  if (!st.ok()) return finish(status_code(st), st.text(true) + suffix, err, len);
  const auto* b = static_cast<const unsigned char*>(buf.p);
  out->assign(b, b + bytes);
  return finish(kDone, "", err, len);
}

struct MmRequest {
  int device, ab, out;
  int64_t M, K, N;
  const void* a_buf;
  const void* b;
  int64_t s0, s1;
  const void* c;  // the expanded bias (D's layout) or nullptr
  int transpose, search;
  void* d;
};

void run(const core::Plan& p, const void* a, const void* b, const void* c, void* d, core::Status* st) {
  Aligned ws(p.workspace);
  core::MmArgs args;
  args.a = a;
  args.b = b;
  args.c = c;
  args.d = d;
  args.workspace = p.workspace ? ws.p : nullptr;
  *st = core::matmul(p, args);
}

// searched_alg (cslt.cpp): a private default plan, a private search plan, the candidate's plan,
// and kSearchChecks runs of both compared bit for bit (on the caller's operands here, on seeded
// synthetic ones in the glue). Returns the algorithm to serve, or the default.
core::AlgChoice searched(cusparseLtHandle_t* h, const core::MmProblem& key, const void* a, const void* b,
                         const void* c, size_t d_bytes, std::string* why, int* code) {
  auto def = core::make_plan(h, key);
  if (!def->ok()) return core::AlgChoice{};
  auto sp = core::make_plan(h, key);
  if (!sp->ok()) return core::AlgChoice{};
  Aligned tmp(d_bytes), ws(sp->workspace);
  core::MmArgs args;
  args.a = a;
  args.b = b;
  args.c = c;
  args.d = tmp.p;
  args.workspace = sp->workspace ? ws.p : nullptr;
  core::AlgChoice cand;
  bool bad_id = false;
  int max_id = 0;
  core::Status st = core::search(*sp, args, &cand, &bad_id, &max_id);
  if (!st.ok() || bad_id) {
    *why = st.ok() ? "search chose id " + std::to_string(cand.id) + " outside [0, " + std::to_string(max_id) + ")"
                   : st.text(true);
    *code = kError;  // the glue warns and keeps the default; the test sees it as an error
    return core::AlgChoice{};
  }
  core::MmProblem ck = key;
  ck.alg = cand;
  auto cp = core::make_plan(h, ck);
  if (!cp->ok()) {
    *why = cp->why.text(true) + " for the searched algorithm";
    *code = kError;
    return core::AlgChoice{};
  }
  for (int t = 0; t < 3; ++t) {
    Aligned ref(d_bytes), got(d_bytes);
    run(*def, a, b, c, ref.p, &st);
    if (st.ok()) run(*cp, a, b, c, got.p, &st);
    if (!st.ok()) {
      *why = st.text(true);
      *code = kError;
      return core::AlgChoice{};
    }
    if (std::memcmp(ref.p, got.p, d_bytes) != 0) return core::AlgChoice{};
  }
  return cand;
}

// mm_refusal + try_mm (cslt.cpp), with the caller's compressed buffer.
int mm(const MmRequest& r, char* err, int64_t len) {
  const std::string reason = core::static_refusal(r.M, r.K, r.N, type_of(r.ab), type_of(r.out));
  if (!reason.empty()) return finish(kRefused, reason, err, len);
  const int eb = core::type_bytes(type_of(r.ab)), ob = core::type_bytes(type_of(r.out));
  // a misaligned compressed buffer is realigned with a copy
  const size_t a_bytes = static_cast<size_t>(r.M * r.K / 2 * eb + r.M * r.K / 8);
  Aligned a_copy(core::aligned16(r.a_buf) ? 0 : a_bytes);
  if (!core::aligned16(r.a_buf)) std::memcpy(a_copy.p, r.a_buf, a_bytes);
  const void* a = core::aligned16(r.a_buf) ? r.a_buf : a_copy.p;
  const core::BLayout bl = core::b_layout(r.b, r.s0, r.s1, r.K, r.N);
  Aligned b_copy(bl.copy ? static_cast<size_t>(r.K * r.N * eb) : 0);
  if (bl.copy) {  // b.clone(contiguous): row-major (K, N)
    const auto* src = static_cast<const unsigned char*>(r.b);
    auto* dst = static_cast<unsigned char*>(b_copy.p);
    for (int64_t i = 0; i < r.K; ++i)
      for (int64_t j = 0; j < r.N; ++j) std::memcpy(dst + (i * r.N + j) * eb, src + (i * r.s0 + j * r.s1) * eb, eb);
  }
  const void* b = bl.copy ? b_copy.p : r.b;
  core::MmProblem key;
  key.device = r.device;
  key.M = r.M;
  key.K = r.K;
  key.N = r.N;
  key.ldb = bl.ld;
  key.ldd = r.transpose ? r.M : r.N;
  key.ab = type_of(r.ab);
  key.out = type_of(r.out);
  key.b_col_major = bl.col;
  key.d_col_major = r.transpose != 0;
  key.with_c = r.c != nullptr;
  const std::string mismatch = core::version_mismatch();
  if (!mismatch.empty()) return finish(kError, mismatch, err, len);
  core::Status st;
  cusparseLtHandle_t* h = core::thread_handle(r.device, &st);
  if (h == nullptr) return finish(status_code(st), st.text(true) + " on this GPU", err, len);
  core::Plan* p = core::cached_plan(h, key);
  if (!p->ok()) return finish(status_code(p->why), p->why.text(true) + " for " + key.describe(), err, len);
  if (r.search) {
    std::string why;
    int code = kDone;
    key.alg = searched(h, key, a, b, r.c, static_cast<size_t>(r.M * r.N * ob), &why, &code);
    if (code != kDone) return finish(code, why, err, len);
    p = core::cached_plan(h, key);
    if (!p->ok()) return finish(kError, "the searched plan could not be rebuilt: " + p->why.text(true), err, len);
  }
  run(*p, a, b, r.c, r.d, &st);
  if (!st.ok()) return finish(status_code(st), st.text(true), err, len);
  return finish(kDone, "", err, len);
}

// try_fp8_mm (cslt.cpp): the static rules, the plan (or its refusal), cuSPARSELt's compression of
// the dense e4m3 A (its own size), then one matmul with the alpha vector (and with C a beta vector
// of ones). b is the K-major (K, N), i.e. the row-major (N, K) e4m3 matrix.
int fp8_mm(int device, int out, int64_t M, int64_t K, int64_t N, const void* a_dense, const void* b_in,
           const float* alpha_in, const void* c, void* d, char* err, int64_t len) {
  const std::string reason = core::static_refusal(M, K, N, core::Type::kE4M3, type_of(out));
  if (!reason.empty()) return finish(kRefused, reason, err, len);
  // a view at an offset is copied to aligned memory, as the glue clones it
  Aligned b_copy(core::aligned16(b_in) ? 0 : static_cast<size_t>(N * K));
  if (!core::aligned16(b_in)) std::memcpy(b_copy.p, b_in, static_cast<size_t>(N * K));
  const void* b = core::aligned16(b_in) ? b_in : b_copy.p;
  Aligned a_copy(core::aligned16(alpha_in) ? 0 : static_cast<size_t>(M * 4));
  if (!core::aligned16(alpha_in)) std::memcpy(a_copy.p, alpha_in, static_cast<size_t>(M * 4));
  const float* alpha = core::aligned16(alpha_in) ? alpha_in : static_cast<const float*>(a_copy.p);
  const core::MmProblem key = core::fp8_problem(device, M, K, N, type_of(out), c != nullptr);
  const std::string mismatch = core::version_mismatch();
  if (!mismatch.empty()) return finish(kError, mismatch, err, len);
  core::Status st;
  cusparseLtHandle_t* h = core::thread_handle(device, &st);
  if (h == nullptr) return finish(status_code(st), st.text(true) + " on this GPU", err, len);
  core::Plan* p = core::cached_plan(h, key);
  if (!p->ok()) return finish(status_code(p->why), p->why.text(true) + " for " + key.describe(), err, len);
  std::vector<unsigned char> a_buf;
  const int rc = compress(device, static_cast<int>(core::Type::kE4M3), M, K, a_dense, 0, 0, &a_buf, err, len);
  if (rc != kDone) return rc;
  Aligned a(a_buf.size()), beta(c != nullptr ? static_cast<size_t>(M * 4) : 0), ws(p->workspace);
  std::memcpy(a.p, a_buf.data(), a_buf.size());
  for (int64_t i = 0; c != nullptr && i < M; ++i) static_cast<float*>(beta.p)[i] = 1.f;
  core::MmArgs args;
  args.a = a.p;
  args.b = b;
  args.c = c;
  args.d = d;
  args.alpha = alpha;
  args.beta = c != nullptr ? static_cast<const float*>(beta.p) : nullptr;
  args.workspace = p->workspace ? ws.p : nullptr;
  st = core::matmul(*p, args);
  if (!st.ok()) return finish(status_code(st), st.text(true), err, len);
  return finish(kDone, "", err, len);
}

}  // namespace

extern "C" {

int sp24cslt_compress(int device, int type, int64_t M, int64_t K, const void* dense, int sp24_size,
                      int64_t sp24_bytes, void* out, int64_t out_cap, int64_t* out_bytes, char* err, int64_t len) {
  g_violations_before = sp24dbl_violations();
  std::vector<unsigned char> buf;
  const int rc = compress(device, type, M, K, dense, sp24_size, sp24_bytes, &buf, err, len);
  *out_bytes = static_cast<int64_t>(buf.size());
  if (rc == kDone) {
    if (static_cast<int64_t>(buf.size()) > out_cap) return finish(kError, "output capacity too small", err, len);
    std::memcpy(out, buf.data(), buf.size());
  }
  return rc;
}

int sp24cslt_mm(int device, int ab, int out, int64_t M, int64_t K, int64_t N, const void* a_buf, const void* b,
                int64_t s0, int64_t s1, const void* c, int transpose, int search, void* d, char* err, int64_t len) {
  g_violations_before = sp24dbl_violations();
  return mm(MmRequest{device, ab, out, M, K, N, a_buf, b, s0, s1, c, transpose, search, d}, err, len);
}

// The same request on a new thread, joined: its handle and cached plans are that thread's own.
int sp24cslt_mm_on_thread(int device, int ab, int out, int64_t M, int64_t K, int64_t N, const void* a_buf,
                          const void* b, int64_t s0, int64_t s1, const void* c, int transpose, int search, void* d,
                          char* err, int64_t len) {
  int rc = kError;
  std::thread t([&]() {
    g_violations_before = sp24dbl_violations();
    rc = mm(MmRequest{device, ab, out, M, K, N, a_buf, b, s0, s1, c, transpose, search, d}, err, len);
  });
  t.join();
  return rc;
}

int sp24cslt_fp8_mm(int device, int out, int64_t M, int64_t K, int64_t N, const void* a_dense, const void* b,
                    const float* alpha, const void* c, void* d, char* err, int64_t len) {
  g_violations_before = sp24dbl_violations();
  return fp8_mm(device, out, M, K, N, a_dense, b, alpha, c, d, err, len);
}

int64_t sp24cslt_cached_plans(void) { return static_cast<int64_t>(core::cached_plans()); }

int sp24cslt_versions(int* header, int* runtime, char* mismatch, int64_t len) {
  *header = core::header_version();
  *runtime = core::runtime_version();
  return finish(kDone, core::version_mismatch(), mismatch, len);
}

int sp24cslt_static_refusal(int64_t M, int64_t K, int64_t N, int ab, int out, char* err, int64_t len) {
  const std::string r = core::static_refusal(M, K, N, type_of(ab), type_of(out));
  finish(kDone, r, err, len);
  return r.empty() ? kDone : kRefused;
}

}  // extern "C"
