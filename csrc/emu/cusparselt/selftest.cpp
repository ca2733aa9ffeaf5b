/* Self-test of the cuSPARSELt contract test double (cusparselt_double.cpp). Build and run from the
 * repository root:
 *
 *   mkdir -p build/emu && g++ -std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
 *     -fno-sanitize-recover=all -Wall -Wextra -Werror -pthread -Icsrc/emu/cusparselt \
 *     csrc/emu/cusparselt/cusparselt_double.cpp csrc/emu/cusparselt/selftest.cpp \
 *     -o build/emu/cslt_double_selftest && build/emu/cslt_double_selftest
 *
 * One valid call sequence passes without a violation; every modelled rule, broken on its own, returns
 * its status and names itself in sp24dbl_last_violation; compress + matmul equal a naive fp32-accumulated
 * product rounded once (fp16, bf16, e4m3 inputs, alpha vector, bias, C, split-K, transposes); the output
 * conversions match independent references (_Float16, nearest-candidate search for bf16 and e4m3).
 * Exit status 0 when everything passed. */
#include "control.h"
#include "cusparseLt.h"

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

std::atomic<int> g_failures{0}, g_checks{0};

void check(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    std::printf("FAIL %s\n", what.c_str());
  }
}

const cusparseOperation_t N_ = CUSPARSE_OPERATION_NON_TRANSPOSE, T_ = CUSPARSE_OPERATION_TRANSPOSE;
const cusparseOrder_t ROW = CUSPARSE_ORDER_ROW, COL = CUSPARSE_ORDER_COL;
const cusparseLtSparsity_t S50 = CUSPARSELT_SPARSITY_50_PERCENT;
const cusparseStatus_t OK = CUSPARSE_STATUS_SUCCESS, INVALID = CUSPARSE_STATUS_INVALID_VALUE,
                       NOTSUP = CUSPARSE_STATUS_NOT_SUPPORTED;

// A call that must break exactly one rule: its status, one more violation, and a text that starts with
// the function's name, mentions `needle` and cites the docs.
void expect_rule(const char* fn, cusparseStatus_t got, cusparseStatus_t want, const char* needle, int before) {
  const std::string v = sp24dbl_last_violation();
  const bool ok = got == want && sp24dbl_violations() == before + 1 && v.rfind(std::string(fn) + ": ", 0) == 0 &&
                  v.find(needle) != std::string::npos && v.find("[cuSPARSELt docs: ") != std::string::npos;
  check(ok, std::string(fn) + " [" + needle + "]: status " + std::to_string(got) + " (want " + std::to_string(want) +
                "), violations +" + std::to_string(sp24dbl_violations() - before) + ", text: " + v);
}
#define RULE(fn, call, want, needle)                 \
  do {                                               \
    const int before_ = sp24dbl_violations();        \
    const cusparseStatus_t got_ = (call);            \
    expect_rule(fn, got_, want, needle, before_);    \
  } while (0)
#define GOOD(call)                                                                                              \
  do {                                                                                                          \
    const int before_ = sp24dbl_violations();                                                                   \
    const cusparseStatus_t got_ = (call);                                                                       \
    check(got_ == OK && sp24dbl_violations() == before_,                                                        \
          std::string(#call) + " -> " + std::to_string(got_) + " (" + sp24dbl_last_violation() + ")");          \
  } while (0)

// 64-byte aligned, zeroed host memory (the double's "device memory").
struct Buf {
  unsigned char* p = nullptr;
  size_t n = 0;
  explicit Buf(size_t bytes) : n(bytes) {
    const size_t r = (bytes + 63) / 64 * 64;
    p = static_cast<unsigned char*>(std::aligned_alloc(64, r ? r : 64));
    std::memset(p, 0, r ? r : 64);
  }
  ~Buf() { std::free(p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
};

// ---- independent reference conversions -----------------------------------------------------------------
uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t ref_half(float x) {
  const _Float16 h = static_cast<_Float16>(x);
  uint16_t u;
  std::memcpy(&u, &h, 2);
  return u;
}
float ref_half_to_float(uint16_t u) {
  _Float16 h;
  std::memcpy(&h, &u, 2);
  return static_cast<float>(h);
}
// bf16: the nearer of the two truncation candidates, ties to the even one (infinity counts as 2^128).
double bf16_candidate(uint32_t b) {
  const float f = from_bits(b);
  return std::isinf(f) ? std::copysign(std::ldexp(1.0, 128), static_cast<double>(f)) : static_cast<double>(f);
}
uint16_t ref_bf16(float x) {
  const uint32_t u = bits(x);
  if (std::isinf(x)) return static_cast<uint16_t>(u >> 16);
  const uint32_t lo = u & 0xFFFF0000u, hi = lo + 0x10000u;
  const double dl = std::fabs(bf16_candidate(lo) - x), dh = std::fabs(bf16_candidate(hi) - x);
  if (dl < dh || (dl == dh && ((lo >> 16) & 1u) == 0)) return static_cast<uint16_t>(lo >> 16);
  return static_cast<uint16_t>(hi >> 16);
}
float ref_bf16_to_float(uint16_t b) { return from_bits(static_cast<uint32_t>(b) << 16); }
// e4m3fn value of a code, from its fields (NaN for S.1111.111).
double e4m3_value(int code) {
  const int s = code >> 7, e = (code >> 3) & 15, m = code & 7;
  if (e == 15 && m == 7) return std::numeric_limits<double>::quiet_NaN();
  const double mag = e == 0 ? m / 8.0 * std::ldexp(1.0, -6) : (1.0 + m / 8.0) * std::ldexp(1.0, e - 7);
  return s ? -mag : mag;
}
// Nearest finite code (ties: even mantissa), saturating to +-448, NaN -> 0x7F.
uint8_t ref_e4m3(float x) {
  if (std::isnan(x)) return 0x7F;
  const bool neg = std::signbit(x);
  const double a = std::fabs(static_cast<double>(x));
  if (a >= 448.0) return static_cast<uint8_t>((neg ? 0x80 : 0) | 0x7E);
  int best = 0;
  double bd = 1e300;
  for (int c = 0; c <= 0x7E; ++c) {
    const double d = std::fabs(e4m3_value(c) - a);
    if (d < bd || (d == bd && (c & 1) == 0)) {
      bd = d;
      best = c;
    }
  }
  return static_cast<uint8_t>((neg ? 0x80 : 0) | best);
}
float ref_e4m3_to_float(uint8_t c) { return static_cast<float>(e4m3_value(c)); }

// ---- generic operand access ----------------------------------------------------------------------------
int esize(cudaDataType t) {
  return t == CUDA_R_32F || t == CUDA_R_32I ? 4 : (t == CUDA_R_16F || t == CUDA_R_16BF) ? 2 : 1;
}
float getv(cudaDataType t, const void* base, int64_t i) {
  const unsigned char* p = static_cast<const unsigned char*>(base);
  uint16_t h;
  switch (t) {
    case CUDA_R_16F: std::memcpy(&h, p + 2 * i, 2); return ref_half_to_float(h);
    case CUDA_R_16BF: std::memcpy(&h, p + 2 * i, 2); return ref_bf16_to_float(h);
    case CUDA_R_8F_E4M3: return ref_e4m3_to_float(p[i]);
    case CUDA_R_8I: return static_cast<float>(static_cast<int8_t>(p[i]));
    case CUDA_R_32F: {
      float f;
      std::memcpy(&f, p + 4 * i, 4);
      return f;
    }
    default: return 0.f;
  }
}
void setv(cudaDataType t, void* base, int64_t i, float v) {
  unsigned char* p = static_cast<unsigned char*>(base);
  uint16_t h;
  switch (t) {
    case CUDA_R_16F: h = ref_half(v); std::memcpy(p + 2 * i, &h, 2); break;
    case CUDA_R_16BF: h = ref_bf16(v); std::memcpy(p + 2 * i, &h, 2); break;
    case CUDA_R_8F_E4M3: p[i] = ref_e4m3(v); break;
    case CUDA_R_8I: p[i] = static_cast<unsigned char>(static_cast<int8_t>(v)); break;
    case CUDA_R_32F: std::memcpy(p + 4 * i, &v, 4); break;
    default: break;
  }
}
// Rounds once to t (the reference of D's element).
uint32_t ref_code(cudaDataType t, float v) {
  switch (t) {
    case CUDA_R_16F: return ref_half(v);
    case CUDA_R_16BF: return ref_bf16(v);
    case CUDA_R_8F_E4M3: return ref_e4m3(v);
    case CUDA_R_32F: return bits(v);
    default: return 0;
  }
}
uint32_t raw_code(cudaDataType t, const void* base, int64_t i) {
  const unsigned char* p = static_cast<const unsigned char*>(base);
  uint32_t u = 0;
  std::memcpy(&u, p + esize(t) * i, static_cast<size_t>(esize(t)));
  return u;
}
int64_t at(cusparseOrder_t o, int64_t ld, int64_t r, int64_t c) { return o == ROW ? r * ld + c : c * ld + r; }

// ---- one product, end to end ------------------------------------------------------------------------------
struct Spec {
  cudaDataType ab = CUDA_R_16F, ct = CUDA_R_16F, dt = CUDA_R_16F;
  cusparseComputeType compute = CUSPARSE_COMPUTE_32F;
  int64_t M = 32, N = 48, K = 64;
  cusparseOperation_t opA = N_, opB = N_;
  cusparseOrder_t oA = ROW, oB = ROW, oC = ROW;
  int64_t ldpad = 0;  // extra leading dimension of B
  bool sparseB = false;
  float alpha = 1.f, beta = 0.f;
  bool alpha_vec = false, bias = false, search = false, in_place = false;
};

float rnd(std::mt19937& g, float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(g); }

// Runs the product through the double and compares every element of D with the reference; returns
// the number of mismatches.
int run_product(const char* name, const Spec& s, uint32_t seed) {
  std::mt19937 g(seed);
  cusparseLtHandle_t h;
  cusparseLtMatDescriptor_t dA, dB, dC;
  cusparseLtMatmulDescriptor_t mm;
  cusparseLtMatmulAlgSelection_t alg;
  cusparseLtMatmulPlan_t plan;
  const int v0 = sp24dbl_violations();
  GOOD(cusparseLtInit(&h));
  const int64_t ar = s.opA == N_ ? s.M : s.K, ac = s.opA == N_ ? s.K : s.M;
  const int64_t br = s.opB == N_ ? s.K : s.N, bc = s.opB == N_ ? s.N : s.K;
  const int64_t lda = s.oA == ROW ? ac : ar, ldb = (s.oB == ROW ? bc : br) + s.ldpad, ldc = s.oC == ROW ? s.N : s.M;
  const int64_t asz = (s.oA == ROW ? ar : ac) * lda, bsz = (s.oB == ROW ? br : bc) * ldb, csz = (s.oC == ROW ? s.M : s.N) * ldc;
  if (s.sparseB) {
    GOOD(cusparseLtDenseDescriptorInit(&h, &dA, ar, ac, lda, 16, s.ab, s.oA));
    GOOD(cusparseLtStructuredDescriptorInit(&h, &dB, br, bc, ldb, 16, s.ab, s.oB, S50));
  } else {
    GOOD(cusparseLtStructuredDescriptorInit(&h, &dA, ar, ac, lda, 16, s.ab, s.oA, S50));
    GOOD(cusparseLtDenseDescriptorInit(&h, &dB, br, bc, ldb, 16, s.ab, s.oB));
  }
  GOOD(cusparseLtDenseDescriptorInit(&h, &dC, s.M, s.N, ldc, 16, s.dt, s.oC));
  cusparseLtMatDescriptor_t dCin;  // C's own descriptor (FP8 into E4M3: C is 16-bit, D 8-bit)
  const bool separate_c = s.ct != s.dt;
  if (separate_c) GOOD(cusparseLtDenseDescriptorInit(&h, &dCin, s.M, s.N, ldc, 16, s.ct, s.oC));
  GOOD(cusparseLtMatmulDescriptorInit(&h, &mm, s.opA, s.opB, &dA, &dB, separate_c ? &dCin : &dC, &dC, s.compute));
  // operands: op(A)[i][k], op(B)[k][j] as floats exactly representable in the input type; the
  // structured one 2:4 along K (two kept in each group of four, at random positions)
  Buf A(static_cast<size_t>(asz * esize(s.ab))), B(static_cast<size_t>(bsz * esize(s.ab)));
  Buf C(static_cast<size_t>(csz * esize(s.ct))), D(static_cast<size_t>(csz * esize(s.dt)));
  std::vector<float> a(static_cast<size_t>(s.M * s.K)), b(static_cast<size_t>(s.K * s.N));
  const float range = s.ab == CUDA_R_8F_E4M3 ? 8.f : 2.f;
  for (int64_t i = 0; i < s.M; ++i)
    for (int64_t k = 0; k < s.K; ++k) {
      Buf one(4);
      setv(s.ab, one.p, 0, rnd(g, -range, range));
      a[static_cast<size_t>(i * s.K + k)] = getv(s.ab, one.p, 0);
    }
  for (int64_t k = 0; k < s.K; ++k)
    for (int64_t j = 0; j < s.N; ++j) {
      Buf one(4);
      setv(s.ab, one.p, 0, rnd(g, -range, range));
      b[static_cast<size_t>(k * s.N + j)] = getv(s.ab, one.p, 0);
    }
  // 2:4 pruning of the structured operand along K
  auto prune = [&](std::vector<float>& m, bool rows_are_k, int64_t R, int64_t Cn) {
    const int64_t P = rows_are_k ? Cn : R, Kd = rows_are_k ? R : Cn;
    for (int64_t p = 0; p < P; ++p)
      for (int64_t q = 0; q < Kd / 4; ++q) {
        const int keep0 = static_cast<int>(g() % 4), keep1 = (keep0 + 1 + static_cast<int>(g() % 3)) % 4;
        for (int j = 0; j < 4; ++j)
          if (j != keep0 && j != keep1) m[static_cast<size_t>(rows_are_k ? (4 * q + j) * Cn + p : p * Cn + 4 * q + j)] = 0.f;
      }
  };
  if (s.sparseB) prune(b, true, s.K, s.N);
  else prune(a, false, s.M, s.K);
  for (int64_t i = 0; i < s.M; ++i)
    for (int64_t k = 0; k < s.K; ++k)
      setv(s.ab, A.p, s.opA == N_ ? at(s.oA, lda, i, k) : at(s.oA, lda, k, i), a[static_cast<size_t>(i * s.K + k)]);
  for (int64_t k = 0; k < s.K; ++k)
    for (int64_t j = 0; j < s.N; ++j)
      setv(s.ab, B.p, s.opB == N_ ? at(s.oB, ldb, k, j) : at(s.oB, ldb, j, k), b[static_cast<size_t>(k * s.N + j)]);
  std::vector<float> c(static_cast<size_t>(s.M * s.N));
  for (int64_t i = 0; i < s.M; ++i)
    for (int64_t j = 0; j < s.N; ++j) {
      Buf one(4);
      setv(s.ct, one.p, 0, rnd(g, -4.f, 4.f));
      c[static_cast<size_t>(i * s.N + j)] = getv(s.ct, one.p, 0);
      setv(s.ct, C.p, at(s.oC, ldc, i, j), c[static_cast<size_t>(i * s.N + j)]);
    }
  if (s.in_place) std::memcpy(D.p, C.p, C.n);  // D == C
  else std::memset(D.p, 0xFF, D.n);              // NaN-like garbage
  std::vector<float> av(static_cast<size_t>(s.M)), bias(static_cast<size_t>(s.M));
  Buf avb(static_cast<size_t>(s.M * 4)), biasb(static_cast<size_t>(s.M * 4));
  const cudaDataType bias_t = (s.ab == CUDA_R_8F_E4M3 || s.ab == CUDA_R_8I) ? CUDA_R_32F : s.dt;
  for (int64_t i = 0; i < s.M; ++i) {
    av[static_cast<size_t>(i)] = rnd(g, 0.25f, 2.f);
    std::memcpy(avb.p + 4 * i, &av[static_cast<size_t>(i)], 4);
    Buf one(4);
    setv(bias_t, one.p, 0, rnd(g, -3.f, 3.f));
    bias[static_cast<size_t>(i)] = getv(bias_t, one.p, 0);
    setv(bias_t, biasb.p, i, bias[static_cast<size_t>(i)]);
  }
  if (s.alpha_vec) {
    const int one = 1;
    GOOD(cusparseLtMatmulDescSetAttribute(&h, &mm, CUSPARSELT_MATMUL_ALPHA_VECTOR_SCALING, &one, sizeof one));
  }
  if (s.bias) {
    void* bp = biasb.p;
    GOOD(cusparseLtMatmulDescSetAttribute(&h, &mm, CUSPARSELT_MATMUL_BIAS_POINTER, &bp, sizeof bp));
  }
  GOOD(cusparseLtMatmulAlgSelectionInit(&h, &alg, &mm, CUSPARSELT_MATMUL_ALG_DEFAULT));
  GOOD(cusparseLtMatmulPlanInit(&h, &plan, &mm, &alg));
  // compress the structured operand
  size_t cs = 0, cbs = 0;
  GOOD(cusparseLtSpMMACompressedSize2(&h, s.sparseB ? &dB : &dA, &cs, &cbs));
  Buf comp(cs), scratch(cbs);
  GOOD(cusparseLtSpMMACompress2(&h, s.sparseB ? &dB : &dA, s.sparseB ? 0 : 1, s.sparseB ? s.opB : s.opA,
                                s.sparseB ? B.p : A.p, comp.p, scratch.p, nullptr));
  size_t ws = 0;
  GOOD(cusparseLtMatmulGetWorkspace(&h, &plan, &ws));
  Buf work(ws);
  cudaStream_t streams[1] = {nullptr};
  const void* alpha = s.alpha_vec ? static_cast<const void*>(avb.p) : static_cast<const void*>(&s.alpha);
  const void* dApt = s.sparseB ? A.p : comp.p;
  const void* dBpt = s.sparseB ? comp.p : B.p;
  void* dCpt = s.in_place ? static_cast<void*>(D.p) : static_cast<void*>(C.p);
  int split_k = 1;
  if (s.search) {
    GOOD(cusparseLtMatmulSearch(&h, &plan, alpha, dApt, dBpt, &s.beta, dCpt, D.p, work.p, streams, 1));
    GOOD(cusparseLtMatmulAlgGetAttribute(&h, &alg, CUSPARSELT_MATMUL_SPLIT_K, &split_k, sizeof split_k));
  } else {
    GOOD(cusparseLtMatmul(&h, &plan, alpha, dApt, dBpt, &s.beta, dCpt, D.p, work.p, streams, 1));
  }
  // the reference: fp32 accumulation, k ascending (per split-K slice, slices summed in order), then
  // alpha*acc (+ beta*c) (+ bias) in fp32 and one rounding to D's type
  int bad = 0;
  const int64_t chunk = (s.K + split_k - 1) / split_k;
  for (int64_t i = 0; i < s.M; ++i)
    for (int64_t j = 0; j < s.N; ++j) {
      float acc = 0.f;
      for (int64_t sl = 0; sl < split_k; ++sl) {
        float part = 0.f;
        for (int64_t k = sl * chunk; k < std::min(s.K, (sl + 1) * chunk); ++k) {
          volatile float prod = a[static_cast<size_t>(i * s.K + k)] * b[static_cast<size_t>(k * s.N + j)];
          part = part + prod;
        }
        acc = sl == 0 ? part : acc + part;
      }
      const float al = s.alpha_vec ? av[static_cast<size_t>(i)] : s.alpha;
      volatile float v = al * acc;
      if (!s.alpha_vec && s.beta != 0.f) {
        volatile float t = s.beta * c[static_cast<size_t>(i * s.N + j)];
        v = v + t;
      }
      if (s.bias) v = v + bias[static_cast<size_t>(i)];
      const uint32_t want = ref_code(s.dt, v), got = raw_code(s.dt, D.p, at(s.oC, ldc, i, j));
      if (want != got) {
        if (bad < 3) std::printf("     %s: D[%lld][%lld] = 0x%x, want 0x%x (value %.9g)\n", name, (long long)i, (long long)j, got, want, (double)v);
        ++bad;
      }
    }
  check(bad == 0, std::string(name) + ": D equals the reference (" + std::to_string(bad) + " mismatches)");
  GOOD(cusparseLtMatmulPlanDestroy(&plan));
  GOOD(cusparseLtMatmulAlgSelectionDestroy(&alg));
  GOOD(cusparseLtMatDescriptorDestroy(&dA));
  GOOD(cusparseLtMatDescriptorDestroy(&dB));
  GOOD(cusparseLtMatDescriptorDestroy(&dC));
  if (separate_c) GOOD(cusparseLtMatDescriptorDestroy(&dCin));
  GOOD(cusparseLtDestroy(&h));
  check(sp24dbl_violations() == v0, std::string(name) + ": no violation (" + sp24dbl_last_violation() + ")");
  return bad;
}

// Output conversion through the API: A has a single 1 per row (at k = 0), B a row of ones, so
// D[i][j] = alpha[i] (alpha vector, no beta vector: C is not read). Returns D's codes, row by row.
std::vector<uint32_t> convert_through_matmul(cudaDataType ab, cudaDataType ct, cudaDataType dt, const std::vector<float>& vals) {
  const int64_t M = static_cast<int64_t>(vals.size()), N = 16, K = 32;
  cusparseLtHandle_t h;
  cusparseLtMatDescriptor_t dA, dB, dC, dD;
  cusparseLtMatmulDescriptor_t mm;
  cusparseLtMatmulAlgSelection_t alg;
  cusparseLtMatmulPlan_t plan;
  GOOD(cusparseLtInit(&h));
  GOOD(cusparseLtStructuredDescriptorInit(&h, &dA, M, K, K, 16, ab, ROW, S50));
  GOOD(cusparseLtDenseDescriptorInit(&h, &dB, N, K, K, 16, ab, ROW));  // op(B) = T: K-major
  GOOD(cusparseLtDenseDescriptorInit(&h, &dC, M, N, N, 16, ct, ROW));
  GOOD(cusparseLtDenseDescriptorInit(&h, &dD, M, N, N, 16, dt, ROW));
  GOOD(cusparseLtMatmulDescriptorInit(&h, &mm, N_, T_, &dA, &dB, &dC, &dD, CUSPARSE_COMPUTE_32F));
  const int one = 1;
  GOOD(cusparseLtMatmulDescSetAttribute(&h, &mm, CUSPARSELT_MATMUL_ALPHA_VECTOR_SCALING, &one, sizeof one));
  GOOD(cusparseLtMatmulAlgSelectionInit(&h, &alg, &mm, CUSPARSELT_MATMUL_ALG_DEFAULT));
  GOOD(cusparseLtMatmulPlanInit(&h, &plan, &mm, &alg));
  Buf A(static_cast<size_t>(M * K * esize(ab))), B(static_cast<size_t>(N * K * esize(ab))), C(static_cast<size_t>(M * N * esize(ct))),
      D(static_cast<size_t>(M * N * esize(dt))), av(static_cast<size_t>(M * 4));
  for (int64_t i = 0; i < M; ++i) setv(ab, A.p, i * K, 1.f);
  for (int64_t j = 0; j < N; ++j) setv(ab, B.p, j * K, 1.f);
  std::memset(C.p, 0xFF, C.n);  // must not be read
  std::memcpy(av.p, vals.data(), vals.size() * 4);
  size_t cs = 0, cbs = 0, ws = 0;
  GOOD(cusparseLtSpMMACompressedSize2(&h, &dA, &cs, &cbs));
  Buf comp(cs), scratch(cbs);
  GOOD(cusparseLtSpMMACompress2(&h, &dA, 1, N_, A.p, comp.p, scratch.p, nullptr));
  GOOD(cusparseLtMatmulGetWorkspace(&h, &plan, &ws));
  Buf work(ws);
  GOOD(cusparseLtMatmul(&h, &plan, av.p, comp.p, B.p, nullptr, C.p, D.p, work.p, nullptr, 0));  // beta may be NULL
  std::vector<uint32_t> out(static_cast<size_t>(M));
  bool rows_equal = true;
  for (int64_t i = 0; i < M; ++i) {
    out[static_cast<size_t>(i)] = raw_code(dt, D.p, i * N);
    for (int64_t j = 1; j < N; ++j) rows_equal &= raw_code(dt, D.p, i * N + j) == out[static_cast<size_t>(i)];
  }
  check(rows_equal, "conversion rows are constant");
  GOOD(cusparseLtMatmulPlanDestroy(&plan));
  GOOD(cusparseLtMatmulAlgSelectionDestroy(&alg));
  for (auto* d : {&dA, &dB, &dC, &dD}) GOOD(cusparseLtMatDescriptorDestroy(d));
  GOOD(cusparseLtDestroy(&h));
  return out;
}

std::vector<float> conversion_inputs(float maxv, float min_sub, uint32_t seed) {
  std::vector<float> v = {0.f, -0.f, 1.f, -1.f, maxv, -maxv, maxv * 1.01f, maxv * 1.5f, -maxv * 4.f,
                          std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::quiet_NaN(), min_sub, min_sub * 0.5f, min_sub * 0.49f, min_sub * 1.5f,
                          min_sub * 2.5f, 1e-30f, -1e-30f, 3.f, 0.1f, 1.f / 3.f};
  std::mt19937 g(seed);
  // exact midpoints (ties) between neighbours for 2, 3, 7 and 10 mantissa bits, at many magnitudes:
  // 1 + 2^-(m+1) rounds down to even, 1 + 3 * 2^-(m+1) up to even
  for (int m : {2, 3, 7, 10})
    for (int e = -12; e <= 8; e += 2) {
      v.push_back(std::ldexp(1.f + std::ldexp(1.f, -(m + 1)), e));
      v.push_back(-std::ldexp(1.f + 3.f * std::ldexp(1.f, -(m + 1)), e));
    }
  while (v.size() % 32 != 0 || v.size() < 512) {
    const float mag = std::ldexp(rnd(g, 1.f, 2.f), static_cast<int>(g() % 40) - 24);
    v.push_back(g() % 2 ? mag : -mag);
  }
  return v;
}

// ---- a valid base setup the rule tests break one piece at a time ---------------------------------------
struct Base {
  cusparseLtHandle_t h;
  cusparseLtMatDescriptor_t A, B, C;
  cusparseLtMatmulDescriptor_t mm;
  cusparseLtMatmulAlgSelection_t alg;
  cusparseLtMatmulPlan_t plan;
  int64_t M = 32, N = 32, K;
  size_t cs = 0, cbs = 0, ws = 0;
  Buf dense, comp, scratch, b, d, work;
  explicit Base(int64_t k = 64)
      : K(k), dense(static_cast<size_t>(32 * k * 2)), comp(static_cast<size_t>(32 * k * 2)), scratch(65536),
        b(static_cast<size_t>(k * 32 * 2)), d(32 * 32 * 2), work(1 << 20) {
    GOOD(cusparseLtInit(&h));
    GOOD(cusparseLtStructuredDescriptorInit(&h, &A, M, K, K, 16, CUDA_R_16BF, ROW, S50));
    GOOD(cusparseLtDenseDescriptorInit(&h, &B, K, N, N, 16, CUDA_R_16BF, ROW));
    GOOD(cusparseLtDenseDescriptorInit(&h, &C, M, N, N, 16, CUDA_R_16BF, ROW));
    GOOD(cusparseLtMatmulDescriptorInit(&h, &mm, N_, N_, &A, &B, &C, &C, CUSPARSE_COMPUTE_32F));
    GOOD(cusparseLtMatmulAlgSelectionInit(&h, &alg, &mm, CUSPARSELT_MATMUL_ALG_DEFAULT));
    GOOD(cusparseLtMatmulPlanInit(&h, &plan, &mm, &alg));
    GOOD(cusparseLtSpMMACompressedSize2(&h, &A, &cs, &cbs));
    for (int64_t i = 0; i < M; ++i)
      for (int64_t q = 0; q < K / 4; ++q) setv(CUDA_R_16BF, dense.p, i * K + 4 * q + (i + q) % 4, 1.f + static_cast<float>(i % 3));
    GOOD(cusparseLtSpMMACompress2(&h, &A, 1, N_, dense.p, comp.p, scratch.p, nullptr));
    GOOD(cusparseLtMatmulGetWorkspace(&h, &plan, &ws));
  }
  cusparseStatus_t matmul(const void* alpha, const void* beta, const void* dA, const void* dB, const void* dC, void* dD,
                          void* w, cudaStream_t* st = nullptr, int32_t n = 0) {
    return cusparseLtMatmul(&h, &plan, alpha, dA, dB, beta, dC, dD, w, st, n);
  }
  ~Base() {
    cusparseLtMatmulPlanDestroy(&plan);
    cusparseLtMatmulAlgSelectionDestroy(&alg);
    cusparseLtMatDescriptorDestroy(&A);
    cusparseLtMatDescriptorDestroy(&B);
    cusparseLtMatDescriptorDestroy(&C);
    cusparseLtDestroy(&h);
  }
};

void test_library() {
  check(std::string(cusparseLtGetErrorName(CUSPARSE_STATUS_INVALID_VALUE)) == "CUSPARSE_STATUS_INVALID_VALUE", "error name");
  check(std::string(cusparseLtGetErrorString(CUSPARSE_STATUS_ARCH_MISMATCH)) == "architecture mismatch", "error string");
  check(std::string(cusparseLtGetErrorName(static_cast<cusparseStatus_t>(12))) == "unrecognized error code", "unknown name");
  int v = -1;
  GOOD(cusparseLtGetProperty(MAJOR_VERSION, &v));
  check(v == 0, "major version 0");
  GOOD(cusparseLtGetProperty(MINOR_VERSION, &v));
  check(v == 8, "minor version 8");
  GOOD(cusparseLtGetProperty(PATCH_LEVEL, &v));
  check(v == 0, "patch level 0");
  RULE("cusparseLtGetProperty", cusparseLtGetProperty(static_cast<libraryPropertyType>(3), &v), INVALID, "propertyType = 3");
  RULE("cusparseLtGetProperty", cusparseLtGetProperty(MAJOR_VERSION, nullptr), INVALID, "value is NULL");
}

void test_handles() {
  RULE("cusparseLtInit", cusparseLtInit(nullptr), INVALID, "handle is NULL");
  cusparseLtHandle_t zero;
  std::memset(&zero, 0, sizeof zero);
  cusparseLtMatDescriptor_t d;
  RULE("cusparseLtDenseDescriptorInit", cusparseLtDenseDescriptorInit(&zero, &d, 64, 64, 64, 16, CUDA_R_16F, ROW), INVALID,
       "not initialised by cusparseLtInit");
  cusparseLtHandle_t h, h2;
  GOOD(cusparseLtInit(&h));
  GOOD(cusparseLtInit(&h2));
  int ver = 0;
  GOOD(cusparseLtGetVersion(&h, &ver));
  check(ver == 800, "cusparseLtGetVersion reads 800");
  GOOD(cusparseLtDestroy(&h2));
  RULE("cusparseLtDestroy", cusparseLtDestroy(&h2), INVALID, "was destroyed by cusparseLtDestroy");
  RULE("cusparseLtStructuredDescriptorInit",
       cusparseLtStructuredDescriptorInit(&h2, &d, 64, 64, 64, 16, CUDA_R_16F, ROW, S50), INVALID, "was destroyed");
  // an object of one handle used with another
  cusparseLtHandle_t h3;
  GOOD(cusparseLtInit(&h3));
  cusparseLtMatDescriptor_t a, b, c;
  GOOD(cusparseLtStructuredDescriptorInit(&h, &a, 32, 64, 64, 16, CUDA_R_16F, ROW, S50));
  GOOD(cusparseLtDenseDescriptorInit(&h, &b, 64, 32, 32, 16, CUDA_R_16F, ROW));
  GOOD(cusparseLtDenseDescriptorInit(&h, &c, 32, 32, 32, 16, CUDA_R_16F, ROW));
  cusparseLtMatmulDescriptor_t mm;
  RULE("cusparseLtMatmulDescriptorInit",
       cusparseLtMatmulDescriptorInit(&h3, &mm, N_, N_, &a, &b, &c, &c, CUSPARSE_COMPUTE_32F), INVALID,
       "was initialised with handle");
  // unsupported GPU
  sp24dbl_set_arch(75);
  cusparseLtHandle_t old;
  RULE("cusparseLtInit", cusparseLtInit(&old), CUSPARSE_STATUS_ARCH_MISMATCH, "sm_75");
  sp24dbl_set_arch(90);
  for (auto* x : {&a, &b, &c}) GOOD(cusparseLtMatDescriptorDestroy(x));
  RULE("cusparseLtMatDescriptorDestroy", cusparseLtMatDescriptorDestroy(&a), INVALID, "was destroyed");
  RULE("cusparseLtMatDescriptorDestroy", cusparseLtMatDescriptorDestroy(nullptr), INVALID, "matDescr is NULL");
  GOOD(cusparseLtDestroy(&h3));
  GOOD(cusparseLtDestroy(&h));
}

void test_descriptors() {
  cusparseLtHandle_t h;
  GOOD(cusparseLtInit(&h));
  cusparseLtMatDescriptor_t d;
  const char* D = "cusparseLtDenseDescriptorInit";
  const char* S = "cusparseLtStructuredDescriptorInit";
  RULE(D, cusparseLtDenseDescriptorInit(&h, nullptr, 64, 64, 64, 16, CUDA_R_16F, ROW), INVALID, "matDescr is NULL");
  RULE(D, cusparseLtDenseDescriptorInit(&h, &d, 0, 64, 64, 16, CUDA_R_16F, ROW), INVALID, "must be positive");
  RULE(D, cusparseLtDenseDescriptorInit(&h, &d, 64, 64, 56, 16, CUDA_R_16F, ROW), INVALID, "ld = 56 < cols = 64");
  RULE(D, cusparseLtDenseDescriptorInit(&h, &d, 128, 64, 64, 16, CUDA_R_16F, COL), INVALID, "ld = 64 < rows = 128");
  RULE(D, cusparseLtDenseDescriptorInit(&h, &d, 64, 64, 64, 16, CUDA_R_16F, static_cast<cusparseOrder_t>(3)), INVALID,
       "order = 3");
  RULE(D, cusparseLtDenseDescriptorInit(&h, &d, 64, 64, 64, 16, CUDA_R_64F, ROW), INVALID, "valueType CUDA_R_64F");
  RULE(D, cusparseLtDenseDescriptorInit(&h, &d, 64, 64, 64, 16, CUDA_R_4F_E2M1, ROW), INVALID, "not modelled");
  RULE(D, cusparseLtDenseDescriptorInit(&h, &d, 64, 64, 64, 8, CUDA_R_16F, ROW), NOTSUP, "alignment = 8");
  RULE(D, cusparseLtDenseDescriptorInit(&h, &d, 64, 64, 64, 24, CUDA_R_16F, ROW), NOTSUP, "alignment = 24");
  RULE(D, cusparseLtDenseDescriptorInit(&h, &d, 4, 64, 64, 16, CUDA_R_16F, ROW), NOTSUP, "rows = 4 is not a multiple of 8");
  RULE(D, cusparseLtDenseDescriptorInit(&h, &d, 64, 64, 68, 16, CUDA_R_16F, ROW), NOTSUP, "ld = 68 is not a multiple of 8");
  RULE(D, cusparseLtDenseDescriptorInit(&h, &d, 64, 8, 8, 16, CUDA_R_8F_E4M3, ROW), NOTSUP, "cols = 8 is not a multiple of 16");
  RULE(D, cusparseLtDenseDescriptorInit(&h, &d, 65536, 32768, 32768, 16, CUDA_R_16F, ROW), INVALID, "more than the 2147483647");
  RULE(S, cusparseLtStructuredDescriptorInit(&h, &d, 8, 64, 64, 16, CUDA_R_16F, ROW, S50), NOTSUP,
       "rows = 8 is not a multiple of 16");
  RULE(S, cusparseLtStructuredDescriptorInit(&h, &d, 16, 64, 64, 16, CUDA_R_8F_E4M3, ROW, S50), NOTSUP,
       "rows = 16 is not a multiple of 32");
  RULE(S, cusparseLtStructuredDescriptorInit(&h, &d, 4, 64, 64, 16, CUDA_R_32F, ROW, S50), NOTSUP,
       "rows = 4 is not a multiple of 8");
  RULE(S, cusparseLtStructuredDescriptorInit(&h, &d, 64, 64, 64, 16, CUDA_R_32I, ROW, S50), INVALID, "valueType CUDA_R_32I");
  RULE(S, cusparseLtStructuredDescriptorInit(&h, &d, 64, 64, 64, 16, CUDA_R_16F, ROW, static_cast<cusparseLtSparsity_t>(1)),
       INVALID, "sparsity = 1");
  GOOD(cusparseLtDenseDescriptorInit(&h, &d, 16, 8, 8, 16, CUDA_R_16F, ROW));
  GOOD(cusparseLtMatDescriptorDestroy(&d));
  GOOD(cusparseLtDenseDescriptorInit(&h, &d, 4, 4, 4, 256, CUDA_R_32F, COL));
  GOOD(cusparseLtMatDescriptorDestroy(&d));
  GOOD(cusparseLtStructuredDescriptorInit(&h, &d, 32, 32, 32, 16, CUDA_R_8F_E4M3, ROW, S50));
  GOOD(cusparseLtMatDescriptorDestroy(&d));
  GOOD(cusparseLtDestroy(&h));
}

void test_matmul_descriptor() {
  cusparseLtHandle_t h;
  GOOD(cusparseLtInit(&h));
  const char* F = "cusparseLtMatmulDescriptorInit";
  cusparseLtMatDescriptor_t sA, dA, dB, sB, C, Cld, Ccol, C32, Cbf, B8row, B8col, S8, C8h, D8, Bbf, Bsh;
  GOOD(cusparseLtStructuredDescriptorInit(&h, &sA, 32, 64, 64, 16, CUDA_R_16F, ROW, S50));
  GOOD(cusparseLtDenseDescriptorInit(&h, &dA, 32, 64, 64, 16, CUDA_R_16F, ROW));
  GOOD(cusparseLtDenseDescriptorInit(&h, &dB, 64, 32, 32, 16, CUDA_R_16F, ROW));
  GOOD(cusparseLtStructuredDescriptorInit(&h, &sB, 64, 32, 32, 16, CUDA_R_16F, ROW, S50));
  GOOD(cusparseLtDenseDescriptorInit(&h, &C, 32, 32, 32, 16, CUDA_R_16F, ROW));
  GOOD(cusparseLtDenseDescriptorInit(&h, &Cld, 32, 32, 40, 16, CUDA_R_16F, ROW));
  GOOD(cusparseLtDenseDescriptorInit(&h, &Ccol, 32, 32, 32, 16, CUDA_R_16F, COL));
  GOOD(cusparseLtDenseDescriptorInit(&h, &C32, 32, 32, 32, 16, CUDA_R_32F, ROW));
  GOOD(cusparseLtDenseDescriptorInit(&h, &Cbf, 32, 32, 32, 16, CUDA_R_16BF, ROW));
  GOOD(cusparseLtDenseDescriptorInit(&h, &Bbf, 64, 32, 32, 16, CUDA_R_16BF, ROW));
  GOOD(cusparseLtDenseDescriptorInit(&h, &Bsh, 48, 32, 32, 16, CUDA_R_16F, ROW));
  GOOD(cusparseLtStructuredDescriptorInit(&h, &S8, 32, 64, 64, 16, CUDA_R_8F_E4M3, ROW, S50));
  GOOD(cusparseLtDenseDescriptorInit(&h, &B8row, 64, 32, 32, 16, CUDA_R_8F_E4M3, ROW));  // (K, N) row-major: N-major
  GOOD(cusparseLtDenseDescriptorInit(&h, &B8col, 64, 32, 64, 16, CUDA_R_8F_E4M3, COL));  // (K, N) col-major: K-major
  GOOD(cusparseLtDenseDescriptorInit(&h, &C8h, 32, 32, 32, 16, CUDA_R_16F, ROW));
  GOOD(cusparseLtDenseDescriptorInit(&h, &D8, 32, 32, 32, 16, CUDA_R_8F_E4M3, ROW));
  const cusparseComputeType F32 = CUSPARSE_COMPUTE_32F;
  cusparseLtMatmulDescriptor_t mm;
  GOOD(cusparseLtMatmulDescriptorInit(&h, &mm, N_, N_, &sA, &dB, &C, &C, F32));
  GOOD(cusparseLtMatmulDescriptorInit(&h, &mm, N_, N_, &dA, &sB, &C, &C, F32));  // structured B
  RULE(F, cusparseLtMatmulDescriptorInit(&h, &mm, N_, N_, &dA, &dB, &C, &C, F32), INVALID, "neither matA nor matB");
  RULE(F, cusparseLtMatmulDescriptorInit(&h, &mm, N_, N_, &sA, &sB, &C, &C, F32), INVALID, "both matA and matB");
  RULE(F, cusparseLtMatmulDescriptorInit(&h, &mm, N_, N_, &sA, &Bsh, &C, &C, F32), INVALID, "shapes do not match");
  RULE(F, cusparseLtMatmulDescriptorInit(&h, &mm, T_, N_, &sA, &dB, &C, &C, F32), INVALID, "shapes do not match");
  RULE(F, cusparseLtMatmulDescriptorInit(&h, &mm, CUSPARSE_OPERATION_CONJUGATE_TRANSPOSE, N_, &sA, &dB, &C, &C, F32), INVALID,
       "opA = op(2)");
  RULE(F, cusparseLtMatmulDescriptorInit(&h, &mm, N_, N_, &sA, &dB, &C, &C, static_cast<cusparseComputeType>(3)), INVALID,
       "computeType");
  RULE(F, cusparseLtMatmulDescriptorInit(&h, &mm, N_, N_, &sA, &dB, &C, &Cld, F32), NOTSUP, "differ in layout");
  RULE(F, cusparseLtMatmulDescriptorInit(&h, &mm, N_, N_, &sA, &dB, &Ccol, &C, F32), NOTSUP, "differ in layout");
  RULE(F, cusparseLtMatmulDescriptorInit(&h, &mm, N_, N_, &sA, &Bbf, &Cbf, &Cbf, F32), NOTSUP, "same type");
  RULE(F, cusparseLtMatmulDescriptorInit(&h, &mm, N_, N_, &sA, &dB, &C32, &C32, F32), NOTSUP, "not a supported combination");
  RULE(F, cusparseLtMatmulDescriptorInit(&h, &mm, N_, N_, &sA, &dB, &C, &C, CUSPARSE_COMPUTE_32I), NOTSUP,
       "not a supported combination");
  RULE(F, cusparseLtMatmulDescriptorInit(&h, &mm, N_, N_, &sA, &dB, &sA, &C, F32), INVALID, "it must be dense");
  // FP8: K-major B, table rows (C fp16 -> D e4m3), compute 32F only
  GOOD(cusparseLtMatmulDescriptorInit(&h, &mm, N_, N_, &S8, &B8col, &C8h, &D8, F32));
  RULE(F, cusparseLtMatmulDescriptorInit(&h, &mm, N_, N_, &S8, &B8row, &C8h, &D8, F32), NOTSUP, "needs K-major operands");
  RULE(F, cusparseLtMatmulDescriptorInit(&h, &mm, N_, N_, &S8, &B8col, &D8, &D8, F32), NOTSUP, "not a supported combination");
  RULE(F, cusparseLtMatmulDescriptorInit(&h, &mm, N_, N_, &S8, &B8col, &C8h, &D8, CUSPARSE_COMPUTE_32I), NOTSUP,
       "not a supported combination");
  // architectures: FP8 on sm_80 refused, on sm_89 served; COMPUTE_16F only on sm_90
  for (int sm : {80, 86, 87, 89, 90, 100, 103, 110, 120, 121}) {
    sp24dbl_set_arch(sm);
    cusparseLtHandle_t ha;
    GOOD(cusparseLtInit(&ha));
    cusparseLtMatDescriptor_t a, b, c, d;
    GOOD(cusparseLtStructuredDescriptorInit(&ha, &a, 32, 64, 64, 16, CUDA_R_8F_E4M3, ROW, S50));
    GOOD(cusparseLtDenseDescriptorInit(&ha, &b, 64, 32, 64, 16, CUDA_R_8F_E4M3, COL));
    GOOD(cusparseLtDenseDescriptorInit(&ha, &c, 32, 32, 32, 16, CUDA_R_16BF, ROW));
    GOOD(cusparseLtDenseDescriptorInit(&ha, &d, 32, 32, 32, 16, CUDA_R_16BF, ROW));
    cusparseLtMatmulDescriptor_t m8;
    const int before = sp24dbl_violations();
    const cusparseStatus_t st = cusparseLtMatmulDescriptorInit(&ha, &m8, N_, N_, &a, &b, &c, &d, F32);
    if (sm == 89 || sm >= 90) check(st == OK && sp24dbl_violations() == before, "e4m3 served on sm_" + std::to_string(sm));
    else expect_rule(F, st, NOTSUP, "needs sm_89", before);
    cusparseLtMatDescriptor_t a16, b16, c16;
    GOOD(cusparseLtStructuredDescriptorInit(&ha, &a16, 32, 64, 64, 16, CUDA_R_16F, ROW, S50));
    GOOD(cusparseLtDenseDescriptorInit(&ha, &b16, 64, 32, 32, 16, CUDA_R_16F, ROW));
    GOOD(cusparseLtDenseDescriptorInit(&ha, &c16, 32, 32, 32, 16, CUDA_R_16F, ROW));
    cusparseLtMatmulDescriptor_t m16;
    GOOD(cusparseLtMatmulDescriptorInit(&ha, &m16, N_, N_, &a16, &b16, &c16, &c16, CUSPARSE_COMPUTE_16F));
    cusparseLtMatmulAlgSelection_t sel;
    if (sm == 90) {
      GOOD(cusparseLtMatmulAlgSelectionInit(&ha, &sel, &m16, CUSPARSELT_MATMUL_ALG_DEFAULT));
      GOOD(cusparseLtMatmulAlgSelectionDestroy(&sel));
    } else {
      RULE("cusparseLtMatmulAlgSelectionInit", cusparseLtMatmulAlgSelectionInit(&ha, &sel, &m16, CUSPARSELT_MATMUL_ALG_DEFAULT),
           NOTSUP, "sm_90 only");
    }
    for (auto* x : {&a, &b, &c, &d, &a16, &b16, &c16}) GOOD(cusparseLtMatDescriptorDestroy(x));
    GOOD(cusparseLtDestroy(&ha));
  }
  sp24dbl_set_arch(90);
  // a matmul descriptor whose matrix descriptor was destroyed can no longer be used
  GOOD(cusparseLtMatmulDescriptorInit(&h, &mm, N_, N_, &sA, &dB, &C, &C, F32));
  GOOD(cusparseLtMatDescriptorDestroy(&dB));
  cusparseLtMatmulAlgSelection_t sel;
  RULE("cusparseLtMatmulAlgSelectionInit", cusparseLtMatmulAlgSelectionInit(&h, &sel, &mm, CUSPARSELT_MATMUL_ALG_DEFAULT),
       INVALID, "was destroyed");
  RULE(F, cusparseLtMatmulDescriptorInit(&h, &mm, N_, N_, &sA, &dB, &C, &C, F32), INVALID, "matB (d");
  for (auto* x : {&sA, &dA, &sB, &C, &Cld, &Ccol, &C32, &Cbf, &B8row, &B8col, &S8, &C8h, &D8, &Bbf, &Bsh})
    GOOD(cusparseLtMatDescriptorDestroy(x));
  GOOD(cusparseLtDestroy(&h));
}

void test_attributes() {
  Base b;
  const char* SA = "cusparseLtMatmulDescSetAttribute";
  const char* GA = "cusparseLtMatmulDescGetAttribute";
  int one = 1, zero = 0, two = 2;
  float f = 0.f;
  int64_t l = -1;
  GOOD(cusparseLtMatmulDescSetAttribute(&b.h, &b.mm, CUSPARSELT_MATMUL_ACTIVATION_RELU, &zero, sizeof zero));
  RULE(SA, cusparseLtMatmulDescSetAttribute(&b.h, &b.mm, CUSPARSELT_MATMUL_ACTIVATION_RELU, &one, sizeof one), INVALID,
       "not modelled");
  RULE(SA, cusparseLtMatmulDescSetAttribute(&b.h, &b.mm, CUSPARSELT_MATMUL_ACTIVATION_GELU, &one, sizeof one), INVALID,
       "not modelled");
  RULE(SA, cusparseLtMatmulDescSetAttribute(&b.h, &b.mm, CUSPARSELT_MATMUL_ACTIVATION_GELU_SCALING, &f, sizeof f), INVALID,
       "implies ACTIVATION_GELU");
  RULE(SA, cusparseLtMatmulDescSetAttribute(&b.h, &b.mm, CUSPARSELT_MATMUL_ALPHA_VECTOR_SCALING, &l, sizeof l), INVALID,
       "takes 4 bytes, dataSize = 8");
  RULE(SA, cusparseLtMatmulDescSetAttribute(&b.h, &b.mm, static_cast<cusparseLtMatmulDescAttribute_t>(20), &one, 4), INVALID,
       "attribute 20");
  RULE(SA, cusparseLtMatmulDescSetAttribute(&b.h, &b.mm, CUSPARSELT_MATMUL_BIAS_STRIDE, &l, sizeof l), INVALID, "negative");
  RULE(SA, cusparseLtMatmulDescSetAttribute(&b.h, &b.mm, CUSPARSELT_MATMUL_A_SCALE_MODE, &one, sizeof one), INVALID,
       "not modelled");
  RULE(SA, cusparseLtMatmulDescSetAttribute(&b.h, &b.mm, CUSPARSELT_MATMUL_A_SCALE_MODE, &two, 4), INVALID, "not modelled");
  RULE(SA, cusparseLtMatmulDescSetAttribute(&b.h, &b.mm, CUSPARSELT_MATMUL_BIAS_POINTER, nullptr, sizeof(void*)), INVALID,
       "data is NULL");
  void* p = &b;
  RULE(SA, cusparseLtMatmulDescSetAttribute(&b.h, &b.mm, CUSPARSELT_MATMUL_D_SCALE_POINTER, &p, sizeof p), INVALID,
       "not modelled");
  GOOD(cusparseLtMatmulDescSetAttribute(&b.h, &b.mm, CUSPARSELT_MATMUL_SPARSE_MAT_POINTER, &p, sizeof p));
  void* q = nullptr;
  GOOD(cusparseLtMatmulDescGetAttribute(&b.h, &b.mm, CUSPARSELT_MATMUL_SPARSE_MAT_POINTER, &q, sizeof q));
  check(q == p, "SPARSE_MAT_POINTER reads back");
  GOOD(cusparseLtMatmulDescGetAttribute(&b.h, &b.mm, CUSPARSELT_MATMUL_ACTIVATION_RELU_UPPERBOUND, &f, sizeof f));
  check(std::isinf(f) && f > 0, "ReLU upper bound defaults to +inf");
  GOOD(cusparseLtMatmulDescGetAttribute(&b.h, &b.mm, CUSPARSELT_MATMUL_BIAS_POINTER, &q, sizeof q));
  check(q == nullptr, "no bias by default");
  RULE(GA, cusparseLtMatmulDescGetAttribute(&b.h, &b.mm, CUSPARSELT_MATMUL_BIAS_POINTER, &one, sizeof one), INVALID,
       "takes 8 bytes");
  GOOD(cusparseLtMatmulDescSetAttribute(&b.h, &b.mm, CUSPARSELT_MATMUL_BETA_VECTOR_SCALING, &one, sizeof one));
  int got = -1;
  GOOD(cusparseLtMatmulDescGetAttribute(&b.h, &b.mm, CUSPARSELT_MATMUL_BETA_VECTOR_SCALING, &got, sizeof got));
  check(got == 1, "BETA_VECTOR_SCALING reads back");

  // algorithm selection
  const char* SL = "cusparseLtMatmulAlgSetAttribute";
  int vals[6];
  for (int a = 0; a < 6; ++a)
    GOOD(cusparseLtMatmulAlgGetAttribute(&b.h, &b.alg, static_cast<cusparseLtMatmulAlgAttribute_t>(a), &vals[a], sizeof(int)));
  check(vals[0] == 0 && vals[1] == 4 && vals[2] == 5 && vals[3] == 1 && vals[4] == 1 && vals[5] == 0,
        "selection defaults: id 0 of 4 (K < 256), 5 iterations, split-K 1, one kernel, 0 buffers");
  int v = 4;
  RULE(SL, cusparseLtMatmulAlgSetAttribute(&b.h, &b.alg, CUSPARSELT_MATMUL_ALG_CONFIG_ID, &v, 4), INVALID, "outside [0, ALG_CONFIG_MAX_ID = 4)");
  v = -1;
  RULE(SL, cusparseLtMatmulAlgSetAttribute(&b.h, &b.alg, CUSPARSELT_MATMUL_ALG_CONFIG_ID, &v, 4), INVALID, "ALG_CONFIG_ID = -1");
  v = 3;
  GOOD(cusparseLtMatmulAlgSetAttribute(&b.h, &b.alg, CUSPARSELT_MATMUL_ALG_CONFIG_ID, &v, 4));
  RULE(SL, cusparseLtMatmulAlgSetAttribute(&b.h, &b.alg, CUSPARSELT_MATMUL_ALG_CONFIG_MAX_ID, &v, 4), INVALID, "read-only");
  v = 0;
  RULE(SL, cusparseLtMatmulAlgSetAttribute(&b.h, &b.alg, CUSPARSELT_MATMUL_SEARCH_ITERATIONS, &v, 4), INVALID, "must be > 0");
  RULE(SL, cusparseLtMatmulAlgSetAttribute(&b.h, &b.alg, CUSPARSELT_MATMUL_SPLIT_K, &v, 4), INVALID, "outside [1, K = 64]");
  v = 65;
  RULE(SL, cusparseLtMatmulAlgSetAttribute(&b.h, &b.alg, CUSPARSELT_MATMUL_SPLIT_K, &v, 4), INVALID, "SPLIT_K = 65");
  v = 1;
  RULE(SL, cusparseLtMatmulAlgSetAttribute(&b.h, &b.alg, CUSPARSELT_MATMUL_SPLIT_K_BUFFERS, &v, 4), INVALID, "set SPLIT_K > 1 first");
  for (int mode : {0, 3, 6}) {
    RULE(SL, cusparseLtMatmulAlgSetAttribute(&b.h, &b.alg, CUSPARSELT_MATMUL_SPLIT_K_MODE, &mode, 4), INVALID, "SPLIT_K_MODE");
  }
  v = 4;
  GOOD(cusparseLtMatmulAlgSetAttribute(&b.h, &b.alg, CUSPARSELT_MATMUL_SPLIT_K, &v, 4));
  v = 2;
  GOOD(cusparseLtMatmulAlgSetAttribute(&b.h, &b.alg, CUSPARSELT_MATMUL_SPLIT_K_MODE, &v, 4));
  v = 4;
  RULE(SL, cusparseLtMatmulAlgSetAttribute(&b.h, &b.alg, CUSPARSELT_MATMUL_SPLIT_K_BUFFERS, &v, 4), INVALID, "SPLIT_K = 4");
  v = 3;
  GOOD(cusparseLtMatmulAlgSetAttribute(&b.h, &b.alg, CUSPARSELT_MATMUL_SPLIT_K_BUFFERS, &v, 4));
  int64_t big = 3;
  RULE(SL, cusparseLtMatmulAlgSetAttribute(&b.h, &b.alg, CUSPARSELT_MATMUL_SPLIT_K_BUFFERS, &big, 8), INVALID, "dataSize = 8");
  RULE("cusparseLtMatmulAlgGetAttribute", cusparseLtMatmulAlgGetAttribute(&b.h, &b.alg, CUSPARSELT_MATMUL_SPLIT_K, nullptr, 4),
       INVALID, "data is NULL");
  // split-K lowered below the buffers: PlanInit re-checks
  v = 2;
  GOOD(cusparseLtMatmulAlgSetAttribute(&b.h, &b.alg, CUSPARSELT_MATMUL_SPLIT_K, &v, 4));
  cusparseLtMatmulPlan_t p2;
  RULE("cusparseLtMatmulPlanInit", cusparseLtMatmulPlanInit(&b.h, &p2, &b.mm, &b.alg), INVALID, "SPLIT_K_BUFFERS = 3");
  v = 1;
  GOOD(cusparseLtMatmulAlgSetAttribute(&b.h, &b.alg, CUSPARSELT_MATMUL_SPLIT_K_BUFFERS, &v, 4));
  GOOD(cusparseLtMatmulPlanInit(&b.h, &p2, &b.mm, &b.alg));
  size_t ws = 0;
  GOOD(cusparseLtMatmulGetWorkspace(&b.h, &p2, &ws));
  check(ws == 256 + 32 * 32 * 4, "split-K 2 workspace holds one buffer");
  GOOD(cusparseLtMatmulPlanDestroy(&p2));
  cusparseLtMatmulAlgSelection_t sel;
  RULE("cusparseLtMatmulAlgSelectionInit",
       cusparseLtMatmulAlgSelectionInit(&b.h, &sel, &b.mm, static_cast<cusparseLtMatmulAlg_t>(1)), INVALID, "alg = 1");
}

void test_plans_and_matmul() {
  Base b;
  const char* MM = "cusparseLtMatmul";
  const float alpha = 1.f, beta = 0.f;
  check(b.ws == 256, "default workspace is 256 bytes");
  GOOD(b.matmul(&alpha, &beta, b.comp.p, b.b.p, b.d.p, b.d.p, b.work.p));
  RULE(MM, b.matmul(&alpha, &beta, b.comp.p, b.b.p, b.d.p, b.d.p, nullptr), INVALID, "workspace is NULL");
  RULE(MM, b.matmul(nullptr, &beta, b.comp.p, b.b.p, b.d.p, b.d.p, b.work.p), INVALID, "alpha is NULL");
  RULE(MM, b.matmul(&alpha, nullptr, b.comp.p, b.b.p, b.d.p, b.d.p, b.work.p), INVALID, "beta is NULL");
  RULE(MM, b.matmul(&alpha, &beta, nullptr, b.b.p, b.d.p, b.d.p, b.work.p), INVALID, "d_A is NULL");
  RULE(MM, b.matmul(&alpha, &beta, b.comp.p, b.b.p, nullptr, b.d.p, b.work.p), INVALID, "d_C is NULL");
  RULE(MM, b.matmul(&alpha, &beta, b.comp.p, b.b.p + 2, b.d.p, b.d.p, b.work.p), INVALID, "d_B = ");
  RULE(MM, b.matmul(&alpha, &beta, b.comp.p, b.b.p, b.d.p, b.d.p, b.work.p + 8), INVALID, "workspace = ");
  RULE(MM, b.matmul(&alpha, &beta, b.comp.p, b.b.p, b.d.p, b.d.p, b.work.p, nullptr, -1), INVALID, "numStreams = -1");
  RULE(MM, b.matmul(&alpha, &beta, b.comp.p, b.b.p, b.d.p, b.d.p, b.work.p, nullptr, 1), INVALID, "streams is NULL");
  RULE(MM, b.matmul(&alpha, &beta, b.comp.p, b.b.p, b.b.p, b.b.p, b.work.p), INVALID, "d_D overlaps d_B");
  RULE(MM, b.matmul(&alpha, &beta, b.comp.p, b.b.p, b.d.p + 64, b.d.p, b.work.p), INVALID, "partly overlaps");
  cudaStream_t st[2] = {nullptr, nullptr};
  GOOD(b.matmul(&alpha, &beta, b.comp.p, b.b.p, b.d.p, b.d.p, b.work.p, st, 2));
  // the plan used with another handle
  cusparseLtHandle_t other;
  GOOD(cusparseLtInit(&other));
  RULE(MM, cusparseLtMatmul(&other, &b.plan, &alpha, b.comp.p, b.b.p, &beta, b.d.p, b.d.p, b.work.p, nullptr, 0), INVALID,
       "was initialised with handle");
  GOOD(cusparseLtDestroy(&other));
  RULE("cusparseLtMatmulGetWorkspace", cusparseLtMatmulGetWorkspace(&b.h, &b.plan, nullptr), INVALID, "workspaceSize is NULL");
  // a selection from another matmul descriptor
  cusparseLtMatmulDescriptor_t mm2;
  GOOD(cusparseLtMatmulDescriptorInit(&b.h, &mm2, N_, N_, &b.A, &b.B, &b.C, &b.C, CUSPARSE_COMPUTE_32F));
  cusparseLtMatmulPlan_t p2;
  RULE("cusparseLtMatmulPlanInit", cusparseLtMatmulPlanInit(&b.h, &p2, &mm2, &b.alg), INVALID, "not from m");
  // destroyed plan
  GOOD(cusparseLtMatmulPlanInit(&b.h, &p2, &b.mm, &b.alg));
  GOOD(cusparseLtMatmulPlanDestroy(&p2));
  RULE("cusparseLtMatmulPlanDestroy", cusparseLtMatmulPlanDestroy(&p2), INVALID, "was destroyed");
  RULE(MM, cusparseLtMatmul(&b.h, &p2, &alpha, b.comp.p, b.b.p, &beta, b.d.p, b.d.p, b.work.p, nullptr, 0), INVALID,
       "was destroyed by cusparseLtMatmulPlanDestroy");
  cusparseLtMatmulPlan_t never;
  std::memset(&never, 0, sizeof never);
  RULE(MM, cusparseLtMatmul(&b.h, &never, &alpha, b.comp.p, b.b.p, &beta, b.d.p, b.d.p, b.work.p, nullptr, 0), INVALID,
       "not initialised by cusparseLtMatmulPlanInit");
  // a plan whose matrix descriptor was destroyed
  {
    cusparseLtMatDescriptor_t B2;
    GOOD(cusparseLtDenseDescriptorInit(&b.h, &B2, b.K, b.N, b.N, 16, CUDA_R_16BF, ROW));
    cusparseLtMatmulDescriptor_t m3;
    GOOD(cusparseLtMatmulDescriptorInit(&b.h, &m3, N_, N_, &b.A, &B2, &b.C, &b.C, CUSPARSE_COMPUTE_32F));
    cusparseLtMatmulAlgSelection_t s3;
    GOOD(cusparseLtMatmulAlgSelectionInit(&b.h, &s3, &m3, CUSPARSELT_MATMUL_ALG_DEFAULT));
    cusparseLtMatmulPlan_t p3;
    GOOD(cusparseLtMatmulPlanInit(&b.h, &p3, &m3, &s3));
    GOOD(cusparseLtMatDescriptorDestroy(&B2));
    RULE(MM, cusparseLtMatmul(&b.h, &p3, &alpha, b.comp.p, b.b.p, &beta, b.d.p, b.d.p, b.work.p, nullptr, 0), INVALID,
         "can no longer be used");
    GOOD(cusparseLtMatmulPlanDestroy(&p3));
    GOOD(cusparseLtMatmulAlgSelectionDestroy(&s3));
    RULE("cusparseLtMatmulAlgSelectionDestroy", cusparseLtMatmulAlgSelectionDestroy(&s3), INVALID, "was destroyed");
  }
  // alpha vector without beta vector: beta may be NULL
  const int one = 1;
  cusparseLtMatmulDescriptor_t mv;
  GOOD(cusparseLtMatmulDescriptorInit(&b.h, &mv, N_, N_, &b.A, &b.B, &b.C, &b.C, CUSPARSE_COMPUTE_32F));
  GOOD(cusparseLtMatmulDescSetAttribute(&b.h, &mv, CUSPARSELT_MATMUL_ALPHA_VECTOR_SCALING, &one, sizeof one));
  cusparseLtMatmulAlgSelection_t sv;
  cusparseLtMatmulPlan_t pv;
  GOOD(cusparseLtMatmulAlgSelectionInit(&b.h, &sv, &mv, CUSPARSELT_MATMUL_ALG_DEFAULT));
  GOOD(cusparseLtMatmulPlanInit(&b.h, &pv, &mv, &sv));
  Buf avec(32 * 4);
  GOOD(cusparseLtMatmul(&b.h, &pv, avec.p, b.comp.p, b.b.p, nullptr, b.d.p, b.d.p, b.work.p, nullptr, 0));
  RULE(MM, cusparseLtMatmul(&b.h, &pv, avec.p + 4, b.comp.p, b.b.p, nullptr, b.d.p, b.d.p, b.work.p, nullptr, 0), INVALID,
       "alpha vector");
  GOOD(cusparseLtMatmulPlanDestroy(&pv));
  GOOD(cusparseLtMatmulAlgSelectionDestroy(&sv));
}

void test_search() {
  const float alpha = 1.f, beta = 0.f;
  for (int64_t K : {64, 512}) {
    Base b(K);
    GOOD(cusparseLtMatmulSearch(&b.h, &b.plan, &alpha, b.comp.p, b.b.p, &beta, b.d.p, b.d.p, b.work.p, nullptr, 0));
    int v[6];
    for (int a = 0; a < 6; ++a)
      GOOD(cusparseLtMatmulAlgGetAttribute(&b.h, &b.alg, static_cast<cusparseLtMatmulAlgAttribute_t>(a), &v[a], sizeof(int)));
    if (K >= 256) {
      check(v[0] == 3 && v[1] == 8 && v[3] == 2 && v[4] == 2 && v[5] == 1, "search (K = 512): id 3 of 8, split-K 2, two kernels, 1 buffer");
      size_t ws = 0;
      GOOD(cusparseLtMatmulGetWorkspace(&b.h, &b.plan, &ws));
      check(ws == 256 + 32 * 32 * 4, "the searched plan's workspace grew");
    } else {
      check(v[0] == 3 && v[1] == 4 && v[3] == 1 && v[4] == 2 && v[5] == 1, "search (K = 64): id 3 of 4, split-K 1 with mode 2 and 1 buffer");
    }
    // a plan from the searched selection builds (search-written buffers are not re-checked)
    cusparseLtMatmulPlan_t p2;
    GOOD(cusparseLtMatmulPlanInit(&b.h, &p2, &b.mm, &b.alg));
    GOOD(cusparseLtMatmulPlanDestroy(&p2));
    // writing the search's split-K 1 buffers back is refused (sp24 must normalise)
    if (K < 256) {
      RULE("cusparseLtMatmulAlgSetAttribute",
           cusparseLtMatmulAlgSetAttribute(&b.h, &b.alg, CUSPARSELT_MATMUL_SPLIT_K_BUFFERS, &v[5], sizeof(int)), INVALID,
           "SPLIT_K = 1");
    }
  }
  {
    // a split-K the user set is kept
    Base b(512);
    int sk = 8;
    GOOD(cusparseLtMatmulAlgSetAttribute(&b.h, &b.alg, CUSPARSELT_MATMUL_SPLIT_K, &sk, sizeof sk));
    cusparseLtMatmulPlan_t p2;
    GOOD(cusparseLtMatmulPlanInit(&b.h, &p2, &b.mm, &b.alg));
    size_t ws = 0;
    GOOD(cusparseLtMatmulGetWorkspace(&b.h, &p2, &ws));
    Buf w(ws);
    GOOD(cusparseLtMatmulSearch(&b.h, &p2, &alpha, b.comp.p, b.b.p, &beta, b.d.p, b.d.p, w.p, nullptr, 0));
    int got = 0;
    GOOD(cusparseLtMatmulAlgGetAttribute(&b.h, &b.alg, CUSPARSELT_MATMUL_SPLIT_K, &got, sizeof got));
    check(got == 8, "search keeps a split-K the user set");
    // the selection destroyed: the search has nowhere to report
    GOOD(cusparseLtMatmulAlgSelectionDestroy(&b.alg));
    RULE("cusparseLtMatmulSearch",
         cusparseLtMatmulSearch(&b.h, &p2, &alpha, b.comp.p, b.b.p, &beta, b.d.p, b.d.p, w.p, nullptr, 0), INVALID,
         "reports its choice through it");
    GOOD(cusparseLtMatmul(&b.h, &p2, &alpha, b.comp.p, b.b.p, &beta, b.d.p, b.d.p, w.p, nullptr, 0));
    GOOD(cusparseLtMatmulPlanDestroy(&p2));
    GOOD(cusparseLtMatmulAlgSelectionInit(&b.h, &b.alg, &b.mm, CUSPARSELT_MATMUL_ALG_DEFAULT));  // for ~Base
  }
}

void test_compression() {
  Base b;
  const char* C2 = "cusparseLtSpMMACompress2";
  // sizes: sp24's cslt_bytes and the buffer
  check(b.cs == static_cast<size_t>(32 * 32 * 2 + 128 * 128 / 8), "compressed size = cslt_bytes(32, 64, 2)");
  check(b.cbs == 256, "compress buffer size = 32*64/8 rounded up to 256");
  size_t s1 = 0, s2 = 0;
  RULE("cusparseLtSpMMACompressedSize2", cusparseLtSpMMACompressedSize2(&b.h, &b.B, &s1, &s2), INVALID, "dense descriptor");
  RULE("cusparseLtSpMMACompressedSize2", cusparseLtSpMMACompressedSize2(&b.h, &b.A, nullptr, &s2), INVALID, "compressedSize is NULL");
  GOOD(cusparseLtSpMMACompressedSize(&b.h, &b.plan, &s1, &s2));
  check(s1 == b.cs && s2 == b.cbs, "plan-based sizes agree");
  // padding past the used prefix is zeroed; the used prefix is written
  Buf out(b.cs);
  std::memset(out.p, 0xEE, b.cs);
  GOOD(cusparseLtSpMMACompress2(&b.h, &b.A, 1, N_, b.dense.p, out.p, b.scratch.p, nullptr));
  const size_t used = 32 * 32 * 2 + 32 * 64 / 8;
  bool pad_zero = true, prefix_written = true;
  for (size_t i = used; i < b.cs; ++i) pad_zero &= out.p[i] == 0;
  for (size_t i = 0; i < 32 * 32 * 2; ++i) prefix_written &= out.p[i] != 0xEE;  // the values (bf16 0, 1, 2, 3)
  check(pad_zero && prefix_written && used < b.cs, "compressed values written, padding zeroed");
  check(std::memcmp(out.p, b.comp.p, b.cs) == 0, "compression is deterministic");
  Buf out2(b.cs);
  GOOD(cusparseLtSpMMACompress(&b.h, &b.plan, b.dense.p, out2.p, b.scratch.p, nullptr));
  check(std::memcmp(out.p, out2.p, b.cs) == 0, "plan-based compression agrees");
  RULE(C2, cusparseLtSpMMACompress2(&b.h, &b.A, 1, N_, b.dense.p, nullptr, b.scratch.p, nullptr), INVALID, "d_compressed is NULL");
  RULE(C2, cusparseLtSpMMACompress2(&b.h, &b.A, 1, N_, nullptr, out.p, b.scratch.p, nullptr), INVALID, "d_dense is NULL");
  RULE(C2, cusparseLtSpMMACompress2(&b.h, &b.A, 1, N_, b.dense.p, out.p, nullptr, nullptr), INVALID, "d_compressed_buffer is NULL");
  RULE(C2, cusparseLtSpMMACompress2(&b.h, &b.A, 1, N_, b.dense.p + 2, out.p, b.scratch.p, nullptr), INVALID, "d_dense = ");
  RULE(C2, cusparseLtSpMMACompress2(&b.h, &b.A, 1, N_, b.dense.p, out.p + 8, b.scratch.p, nullptr), INVALID, "d_compressed = ");
  RULE(C2, cusparseLtSpMMACompress2(&b.h, &b.A, 1, CUSPARSE_OPERATION_CONJUGATE_TRANSPOSE, b.dense.p, out.p, b.scratch.p, nullptr),
       INVALID, "op = op(2)");
  RULE(C2, cusparseLtSpMMACompress2(&b.h, &b.B, 1, N_, b.dense.p, out.p, b.scratch.p, nullptr), INVALID, "dense descriptor");
  RULE(C2, cusparseLtSpMMACompress2(&b.h, &b.A, 1, N_, b.dense.p, b.dense.p + 64, b.scratch.p, nullptr), INVALID, "overlaps d_dense");
  // not 2:4: three nonzeros in a group of row 5
  Buf bad(b.dense.n);
  std::memcpy(bad.p, b.dense.p, b.dense.n);
  for (int j = 0; j < 3; ++j) setv(CUDA_R_16BF, bad.p, 5 * 64 + 8 + j, 1.f);
  RULE(C2, cusparseLtSpMMACompress2(&b.h, &b.A, 1, N_, bad.p, out.p, b.scratch.p, nullptr), INVALID, "not 2:4");
  check(std::string(sp24dbl_last_violation()).find("row 5") != std::string::npos, "the bad row is named");
  // read along the other axis (op T): the same matrix is not 2:4 down its columns
  int valid = -1;
  GOOD(cusparseLtSpMMAPruneCheck2(&b.h, &b.A, 1, N_, b.dense.p, &valid, nullptr));
  check(valid == 0, "PruneCheck2: valid");
  GOOD(cusparseLtSpMMAPruneCheck2(&b.h, &b.A, 1, N_, bad.p, &valid, nullptr));
  check(valid == 1, "PruneCheck2: invalid");
  RULE("cusparseLtSpMMAPruneCheck2", cusparseLtSpMMAPruneCheck2(&b.h, &b.A, 1, N_, b.dense.p, nullptr, nullptr), INVALID,
       "d_valid is NULL");
}

void test_fault_injection_and_controls() {
  const int live0 = sp24dbl_live_objects();
  {
    Base b;
    check(sp24dbl_live_objects() == live0 + 6, "live objects: handle, 3 descriptors, selection, plan");
    const float alpha = 1.f, beta = 0.f;
    const int v0 = sp24dbl_violations();
    std::memset(b.d.p, 0x33, b.d.n);
    sp24dbl_fail_next("cusparseLtMatmul", CUSPARSE_STATUS_NOT_SUPPORTED);
    check(b.matmul(&alpha, &beta, b.comp.p, b.b.p, b.d.p, b.d.p, b.work.p) == NOTSUP, "injected NOT_SUPPORTED");
    check(b.d.p[0] == 0x33 && sp24dbl_violations() == v0, "an injected failure does nothing and is no violation");
    GOOD(b.matmul(&alpha, &beta, b.comp.p, b.b.p, b.d.p, b.d.p, b.work.p));
    sp24dbl_fail_next("cusparseLtMatmulPlanInit", CUSPARSE_STATUS_ALLOC_FAILED);
    sp24dbl_fail_next("cusparseLtMatmulGetWorkspace", CUSPARSE_STATUS_ARCH_MISMATCH);
    sp24dbl_fail_next("", 0);
    cusparseLtMatmulPlan_t p;
    GOOD(cusparseLtMatmulPlanInit(&b.h, &p, &b.mm, &b.alg));
    GOOD(cusparseLtMatmulPlanDestroy(&p));
    sp24dbl_fail_next("cusparseLtInit", CUSPARSE_STATUS_ALLOC_FAILED);
    cusparseLtHandle_t h;
    std::memset(&h, 0, sizeof h);
    check(cusparseLtInit(&h) == CUSPARSE_STATUS_ALLOC_FAILED, "injected ALLOC_FAILED");
    cusparseLtMatDescriptor_t d;
    RULE("cusparseLtDenseDescriptorInit", cusparseLtDenseDescriptorInit(&h, &d, 16, 16, 16, 16, CUDA_R_16F, ROW), INVALID,
         "not initialised");
    const std::string log = sp24dbl_call_log();
    check(log.find("cusparseLtMatmul(handle=h") != std::string::npos &&
              log.find("-> CUSPARSE_STATUS_NOT_SUPPORTED (injected by sp24dbl_fail_next)") != std::string::npos,
          "the call log names calls, arguments, statuses and injections");
  }
  check(sp24dbl_live_objects() == live0, "everything destroyed is no longer live");
  cusparseLtHandle_t h;
  GOOD(cusparseLtInit(&h));
  sp24dbl_reset();
  check(sp24dbl_violations() == 0 && std::string(sp24dbl_last_violation()).empty() && std::string(sp24dbl_call_log()).empty() &&
            sp24dbl_live_objects() == 0,
        "reset forgets everything");
  cusparseLtMatDescriptor_t d;
  RULE("cusparseLtDenseDescriptorInit", cusparseLtDenseDescriptorInit(&h, &d, 16, 16, 16, 16, CUDA_R_16F, ROW), INVALID,
       "forgotten by sp24dbl_reset");
}

void test_conversions() {
  {
    const std::vector<float> in = conversion_inputs(448.f, std::ldexp(1.f, -9), 1);
    const std::vector<uint32_t> got = convert_through_matmul(CUDA_R_8F_E4M3, CUDA_R_16F, CUDA_R_8F_E4M3, in);
    int bad = 0;
    for (size_t i = 0; i < in.size(); ++i)
      if (got[i] != ref_e4m3(in[i])) {
        if (bad < 5) std::printf("     e4m3(%.9g) = 0x%02x, want 0x%02x\n", (double)in[i], got[i], ref_e4m3(in[i]));
        ++bad;
      }
    check(bad == 0, "fp32 -> e4m3 (RNE, saturating, NaN 0x7F) over " + std::to_string(in.size()) + " values");
  }
  {
    const std::vector<float> in = conversion_inputs(65504.f, std::ldexp(1.f, -24), 2);
    const std::vector<uint32_t> got = convert_through_matmul(CUDA_R_16F, CUDA_R_16F, CUDA_R_16F, in);
    int bad = 0;
    for (size_t i = 0; i < in.size(); ++i) {
      const uint32_t want = std::isnan(in[i]) ? 0x7FFFu : ref_half(in[i]);
      if (got[i] != want) {
        if (bad < 5) std::printf("     half(%.9g) = 0x%04x, want 0x%04x\n", (double)in[i], got[i], want);
        ++bad;
      }
    }
    check(bad == 0, "fp32 -> fp16 (RNE, overflow to inf) over " + std::to_string(in.size()) + " values");
  }
  {
    const std::vector<float> in = conversion_inputs(3.38e38f, std::ldexp(1.f, -133), 3);
    const std::vector<uint32_t> got = convert_through_matmul(CUDA_R_16BF, CUDA_R_16BF, CUDA_R_16BF, in);
    int bad = 0;
    for (size_t i = 0; i < in.size(); ++i) {
      const uint32_t want = std::isnan(in[i]) ? 0x7FFFu : ref_bf16(in[i]);
      if (got[i] != want) {
        if (bad < 5) std::printf("     bf16(%.9g) = 0x%04x, want 0x%04x\n", (double)in[i], got[i], want);
        ++bad;
      }
    }
    check(bad == 0, "fp32 -> bf16 (RNE) over " + std::to_string(in.size()) + " values");
  }
}

void test_numerics() {
  Spec s;
  s.alpha = 0.75f;
  s.beta = -1.25f;
  run_product("fp16 NN row-major, alpha and beta", s, 11);
  s.opB = T_;
  s.oC = COL;
  run_product("fp16 op(B)=T, column-major D", s, 12);
  s.opA = T_;
  s.oA = COL;
  s.opB = N_;
  s.oB = COL;
  s.ldpad = 8;
  run_product("fp16 op(A)=T column-major A, column-major B with ld padding", s, 13);
  Spec sb;
  sb.sparseB = true;
  sb.M = 48;
  sb.N = 32;
  sb.K = 64;
  sb.beta = 0.5f;
  run_product("fp16 structured B", sb, 14);
  sb.opB = T_;
  run_product("fp16 structured B, op(B)=T", sb, 15);
  Spec bf;
  bf.ab = bf.ct = bf.dt = CUDA_R_16BF;
  bf.bias = true;
  bf.beta = 0.f;
  run_product("bf16 with a bf16 bias, beta 0 (C not read)", bf, 21);
  bf.beta = 1.f;
  bf.in_place = true;
  run_product("bf16 bias and C, C == D in place", bf, 22);
  bf.K = 512;
  bf.search = true;
  bf.in_place = false;
  run_product("bf16 searched plan (split-K 2, slices summed in order)", bf, 23);
  Spec e8;
  e8.ab = CUDA_R_8F_E4M3;
  e8.ct = e8.dt = CUDA_R_16BF;
  e8.M = 64;
  e8.N = 32;
  e8.K = 64;
  e8.opB = T_;  // B stored (N, K) row-major: K-major
  e8.alpha_vec = true;
  run_product("e4m3 -> bf16 with alpha-vector (row-wise) scaling", e8, 31);
  e8.ct = CUDA_R_16F;
  e8.dt = CUDA_R_8F_E4M3;
  e8.alpha_vec = false;
  e8.alpha = 3.f;
  e8.beta = 0.5f;
  run_product("e4m3 -> e4m3 with an fp16 C (saturating)", e8, 32);
  e8.ct = e8.dt = CUDA_R_32F;
  e8.alpha_vec = true;
  e8.bias = true;
  run_product("e4m3 -> fp32 with alpha vector and a float bias", e8, 33);
  // fp32 output shows the fp32 summation order itself: k ascending, or split-K slices summed in order
  e8.alpha_vec = false;
  e8.bias = false;
  e8.alpha = 1.f;
  e8.beta = 0.f;
  e8.K = 512;
  run_product("e4m3 -> fp32, K = 512 (k ascending)", e8, 34);
  e8.search = true;
  run_product("e4m3 -> fp32, K = 512, searched plan (split-K 2)", e8, 35);
}

// Per-thread handles used concurrently.
void test_threads() {
  const int v0 = sp24dbl_violations();
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([t]() {
      for (int r = 0; r < 10; ++r) {
        Base b(64 + 64 * (t % 2));
        const float alpha = 1.f, beta = 0.f;
        cusparseLtMatmul(&b.h, &b.plan, &alpha, b.comp.p, b.b.p, &beta, b.d.p, b.d.p, b.work.p, nullptr, 0);
      }
    });
  for (auto& t : ts) t.join();
  check(sp24dbl_violations() == v0, "concurrent per-thread sequences break no rule");
}

}  // namespace

int main() {
  sp24dbl_reset();
  test_library();
  test_handles();
  test_descriptors();
  test_matmul_descriptor();
  test_attributes();
  test_plans_and_matmul();
  test_search();
  test_compression();
  test_numerics();
  test_conversions();
  test_threads();
  test_fault_injection_and_controls();
  std::printf("%s: %d checks, %d failures\n", g_failures ? "FAIL" : "PASS", g_checks.load(), g_failures.load());
  return g_failures ? 1 : 0;
}
