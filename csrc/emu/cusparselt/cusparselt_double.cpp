// Contract test double of the cuSPARSELt 0.8 C API subset sp24 calls: a host-only implementation
// written from cuSPARSELt's documentation. A TEST TOOL for CI (no GPU): nothing in the sp24 package
// links it. "Device" pointers are host pointers here.
//
// Every call (a) checks the rules the documentation states and, when one is broken, returns the
// status and records "<function>: <rule, with the values> [cuSPARSELt docs: <page > section>]"
// (control.h: sp24dbl_last_violation / sp24dbl_violations), and (b) computes on host memory:
// compression into a private layout, and D = alpha op(A) op(B) + beta C (+ bias) with fp32
// accumulation in a fixed order and one round-to-nearest-even to D's type.
//
// Citations name pages of https://docs.nvidia.com/cuda/cusparselt/ and their sections:
// functions.html (one section per function), types.html (one per enumerator), index.html "Key
// Features" (the type/architecture table, also in the 0.8.0 wheel's description) and
// release_notes.html (v0.8.0). "measured" notes refer to statuses that public hardware runs of the
// library reported where the documentation names no status; they informed, never overrode, the docs.
//
// CHOICES where the documentation is silent (each also marked `// choice:` at its check). The strict
// reading is taken unless noted.
//  1. Handle misuse (NULL, never initialised, destroyed, forgotten by sp24dbl_reset): INVALID_VALUE.
//     The docs say only "will return an error"; measured runs return INVALID_VALUE for a destroyed or
//     zeroed handle. Descriptors, selections and plans that are NULL, never initialised or destroyed:
//     INVALID_VALUE too. An object used with a handle other than the one that made it: INVALID_VALUE.
//  2. Descriptor size rules: the "multiple of" rules and the alignment argument ("multiple of 16")
//     return NOT_SUPPORTED (measured); ld below rows/cols, non-positive sizes, bad enums and types
//     return INVALID_VALUE. The element-count limit counts the stored extent ((rows or cols) x ld)
//     and returns INVALID_VALUE.
//  3. FP8 (E4M3/E5M2) descriptors follow the docs' 8-bit row (dense 16, structured 32), and the
//     docs' CUDA_R_8I operand-layout rule applies to them too: both operands K-major, i.e.
//     (opA, opB, orderA, orderB) in {TN Col/Col, NT Row/Row, NN Row/Col, TT Col/Row}, whichever
//     operand is structured (the docs add "the opposite if B is structured"; measured runs served a
//     structured int8 B with both operands K-major, so that set is kept).
//  4. C and D: the docs require the same shape; the double also requires the same order and ld
//     (NOT_SUPPORTED, measured). C's and D's types follow the table (they differ only for FP8).
//  5. Architectures: cusparseLtInit below sm_80 returns ARCH_MISMATCH. Non-block-scaled type rows
//     are served on every sm >= 80 (0.8.0 "forward compatibility"); E4M3/E5M2 on sm_89 and sm >= 90;
//     CUSPARSE_COMPUTE_16F (FP16 only) on sm_90 only, refused by cusparseLtMatmulAlgSelectionInit with
//     NOT_SUPPORTED (measured: the descriptor is accepted, the selection refused).
//  6. Not modelled (INVALID_VALUE with "not modelled" in the text): enabling ReLU or GELU (and
//     GELU_SCALING, which implies GELU), scale modes other than NONE, non-NULL scale pointers, the
//     block-scaled types (E2M1, UE8M0), batches. Bounds/threshold values may be stored (no effect).
//  7. Algorithm: CONFIG_MAX_ID is 4 when K < 256, else 8; CONFIG_ID in [0, MAX_ID) (docs "[0, MAX]";
//     measured exclusive); SEARCH_ITERATIONS >= 1 (docs "> 0"); SPLIT_K in [1, K] on every arch;
//     SPLIT_K_MODE ONE_KERNEL or TWO_KERNELS only (the header's HEURISTIC..STREAMK values are not in
//     the docs' table and are refused); SPLIT_K_BUFFERS in [1, SPLIT_K - 1] against the split-K set
//     at that moment (so set split-K first), re-checked by PlanInit. Defaults: id 0, 5 iterations,
//     split-K 1, ONE_KERNEL, 0 buffers (measured). Every id computes the same numbers.
//  8. cusparseLtMatmulSearch picks id 3 and, when split-K was not set: for K >= 256 split-K 2,
//     TWO_KERNELS, 1 buffer; for K < 256 split-K 1 with TWO_KERNELS and 1 buffer (values meaningful
//     only for split-K > 1, which cuSPARSELt may report: sp24 must not write them back). The choice
//     is written into the plan and its selection (the docs read it back from the selection), so the
//     selection must still be alive; PlanInit of that selection later ignores search-written buffers.
//     A split-K > 1 plan sums its K slices in order (fp32), so its bits can differ from split-K 1.
//  9. PlanInit requires the selection to come from the same matmul descriptor; the plan keeps the
//     matmul descriptor's attributes as they were at PlanInit. Matmul descriptors have no destroy
//     function: never counted as live. Re-initialising a live object is no error (it leaks and stays
//     counted by sp24dbl_live_objects).
// 10. Workspace: 256 bytes + (split-K > 1 ? M*N*4*buffers : 0). Every run overwrites all of it (an
//     undersized allocation shows under ASan); NULL with a size > 0: INVALID_VALUE.
// 11. Pointers: d_A, d_B, d_C, d_D, workspace, device alpha/beta vectors, bias, d_dense,
//     d_compressed (and PruneCheck2's d_in) must be non-NULL and 16-byte aligned (and aligned to the descriptor's
//     `alignment`); the docs say "All pointers must be aligned to 16 bytes" for Matmul (host scalars
//     alpha/beta excepted). D overlapping A or B, or C partly overlapping D (C == D is allowed), and
//     d_dense overlapping d_compressed: INVALID_VALUE. The compression buffer may not be NULL while
//     its size is > 0 (measured runs accepted NULL: stricter here). streams: numStreams < 0, or > 0
//     with streams NULL, INVALID_VALUE (measured); the streams are not used.
// 12. beta == 0 (scalar, or a row's beta-vector entry): C is not read (BLAS convention). With the
//     alpha vector and no beta vector, beta is ignored and C not read (the docs let beta be NULL then;
//     measured). BETA_VECTOR_SCALING implies ALPHA_VECTOR_SCALING (docs). The vectors hold M floats
//     (rows of D). Bias: M entries of D's type for 16/32-bit inputs, float for 8-bit inputs (measured
//     for int8; assumed for FP8), added after beta*C; BIAS_STRIDE must be >= 0 (no batches).
// 13. Numerics: op(A) op(B) is accumulated in fp32 with k ascending (per split-K slice, slices summed
//     in order), in fp16 for COMPUTE_16F, exactly for int8; FP32 inputs are rounded to TF32 (nearest,
//     ties away). Epilogue in fp32 (alpha*acc, + beta*c, + bias, each rounded to fp32, no FMA), then
//     one RNE rounding: fp16/bf16 overflow to inf, NaN -> 0x7FFF; E4M3/E5M2 saturate to +-448 /
//     +-57344 (inf too, cuda_fp8 __NV_SATFINITE), NaN -> 0x7F; int8/int32 saturate, NaN -> 0.
// 14. Compressed layout (private; sp24 must not read it): for the structured operand S, rows p of
//     op(S) without K (M for A, N for B) each hold K/2 kept values (row-major, positions ascending),
//     then one nibble (i0 | i1 << 2) per group of 4 along K, two groups per byte, low nibble first.
//     A group with fewer than 2 nonzeros is padded from the right (measured). FP32 (1:2 sparsity)
//     keeps one of each pair. The used prefix is P*K/2*es + P*K/8 bytes; the rest, up to the reported
//     size, is zeroed. Reported sizes (undocumented): compressedSize = sp24's cslt_bytes
//     (csrc/sp24/cslt_layout.h): rows*(cols/2)*es + r128(rows)*r128(cols)/8; compressedBufferSize =
//     rows*cols/8 rounded up to 256 (used as scratch for the metadata).
// 15. A structured matrix that is not 2:4 (FP32: 1:2) along K: Compress2 returns INVALID_VALUE with
//     "not 2:4 (undefined behaviour in cuSPARSELt)"; the docs state the structure as a requirement of
//     Matmul (checkable with cusparseLtSpMMAPruneCheck2), not a check of Compress.
// 16. Error names/strings: cuSPARSE's names and descriptions; unknown codes: "unrecognized error code".
//     ACTIVATION_RELU_UPPERBOUND reads back +inf by default (docs' default).
#include "cusparseLt.h"
#include "control.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

static_assert(sizeof(cusparseLtHandle_t) == 512 && alignof(cusparseLtHandle_t) == 16, "cuSPARSELt 0.8 layout");
static_assert(sizeof(cusparseLtMatDescriptor_t) == 512 && alignof(cusparseLtMatDescriptor_t) == 16, "layout");
static_assert(sizeof(cusparseLtMatmulDescriptor_t) == 512 && alignof(cusparseLtMatmulDescriptor_t) == 16, "layout");
static_assert(sizeof(cusparseLtMatmulAlgSelection_t) == 512 && alignof(cusparseLtMatmulAlgSelection_t) == 16, "layout");
static_assert(sizeof(cusparseLtMatmulPlan_t) == 512 && alignof(cusparseLtMatmulPlan_t) == 16, "layout");

namespace {

// ---- documentation sections -----------------------------------------------------------------------
namespace doc {
const char* const kInit = "functions.html > cusparseLtInit / cusparseLtDestroy";
const char* const kArch = "index.html > Key Features and Support (supported SM architectures: 8.0 and newer)";
const char* const kProperty = "functions.html > cusparseLtGetProperty (libraryPropertyType)";
const char* const kDense = "functions.html > cusparseLtDenseDescriptorInit";
const char* const kStructured = "functions.html > cusparseLtStructuredDescriptorInit";
const char* const kMatDestroy = "functions.html > cusparseLtMatDescriptorDestroy";
const char* const kMatmulInit = "functions.html > cusparseLtMatmulDescriptorInit";
const char* const kTypes =
    "index.html > Key Features (mixed-precision table) and functions.html > cusparseLtMatmulDescriptorInit";
const char* const kRelease = "release_notes.html > cuSPARSELt v0.8.0 (E4M3/E5M2 on SM 8.9, forward compatibility)";
const char* const kLayout8 = "functions.html > cusparseLtMatmulDescriptorInit (Constrains: 8-bit opA/opB and orders)";
const char* const kMatmulAttr =
    "types.html > cusparseLtMatmulDescAttribute_t; functions.html > cusparseLtMatmulDescSetAttribute";
const char* const kAlgInit = "functions.html > cusparseLtMatmulAlgSelectionInit";
const char* const kAlgAttr = "types.html > cusparseLtMatmulAlgAttribute_t; functions.html > cusparseLtMatmulAlgSetAttribute";
const char* const kSplitMode = "types.html > cusparseLtSplitKMode_t";
const char* const kAlgDestroy = "functions.html > cusparseLtMatmulAlgSelectionDestroy (v0.8.0)";
const char* const kPlanInit = "functions.html > cusparseLtMatmulPlanInit";
const char* const kPlanDestroy = "functions.html > cusparseLtMatmulPlanDestroy";
const char* const kWorkspace = "functions.html > cusparseLtMatmulGetWorkspace";
const char* const kMatmul = "functions.html > cusparseLtMatmul";
const char* const kSearch = "functions.html > cusparseLtMatmulSearch";
const char* const kSize2 = "functions.html > cusparseLtSpMMACompressedSize2 / cusparseLtSpMMACompressedSize";
const char* const kCompress2 = "functions.html > cusparseLtSpMMACompress2 / cusparseLtSpMMACompress";
const char* const kStructure =
    "functions.html > cusparseLtMatmul (the structured matrix before compression: 2:4 per row/column) and "
    "cusparseLtSpMMAPruneCheck2";
const char* const kPruneCheck = "functions.html > cusparseLtSpMMAPruneCheck2";
const char* const kChoice = "; docs silent, double's strict choice";
}  // namespace doc

std::string cite(const char* section, bool choice = false) { return std::string(section) + (choice ? doc::kChoice : ""); }

// ---- element types ----------------------------------------------------------------------------------
int type_bytes(int t) {
  switch (t) {
    case CUDA_R_16F:
    case CUDA_R_16BF: return 2;
    case CUDA_R_32F:
    case CUDA_R_32I: return 4;
    case CUDA_R_8I:
    case CUDA_R_8F_E4M3:
    case CUDA_R_8F_E5M2: return 1;
    default: return 0;
  }
}

std::string type_name(int t) {
  switch (t) {
    case CUDA_R_16F: return "CUDA_R_16F";
    case CUDA_R_16BF: return "CUDA_R_16BF";
    case CUDA_R_32F: return "CUDA_R_32F";
    case CUDA_R_32I: return "CUDA_R_32I";
    case CUDA_R_8I: return "CUDA_R_8I";
    case CUDA_R_8F_E4M3: return "CUDA_R_8F_E4M3";
    case CUDA_R_8F_E5M2: return "CUDA_R_8F_E5M2";
    case CUDA_R_8F_UE8M0: return "CUDA_R_8F_UE8M0";
    case CUDA_R_4F_E2M1: return "CUDA_R_4F_E2M1";
    case CUDA_R_64F: return "CUDA_R_64F";
    case CUDA_R_8U: return "CUDA_R_8U";
    default: return "cudaDataType(" + std::to_string(t) + ")";
  }
}

bool is_8bit(int t) { return t == CUDA_R_8I || t == CUDA_R_8F_E4M3 || t == CUDA_R_8F_E5M2; }
bool is_fp8(int t) { return t == CUDA_R_8F_E4M3 || t == CUDA_R_8F_E5M2; }

std::string order_name(int o) {
  return o == CUSPARSE_ORDER_ROW ? "ROW" : o == CUSPARSE_ORDER_COL ? "COL" : "order(" + std::to_string(o) + ")";
}
std::string op_name(int o) {
  return o == CUSPARSE_OPERATION_NON_TRANSPOSE ? "N"
         : o == CUSPARSE_OPERATION_TRANSPOSE   ? "T"
                                               : "op(" + std::to_string(o) + ")";
}
std::string compute_name(int c) {
  switch (c) {
    case CUSPARSE_COMPUTE_32I: return "CUSPARSE_COMPUTE_32I";
    case CUSPARSE_COMPUTE_16F: return "CUSPARSE_COMPUTE_16F";
    case CUSPARSE_COMPUTE_32F: return "CUSPARSE_COMPUTE_32F";
    default: return "cusparseComputeType(" + std::to_string(c) + ")";
  }
}

const char* status_name(int s) {
  switch (s) {
    case CUSPARSE_STATUS_SUCCESS: return "CUSPARSE_STATUS_SUCCESS";
    case CUSPARSE_STATUS_NOT_INITIALIZED: return "CUSPARSE_STATUS_NOT_INITIALIZED";
    case CUSPARSE_STATUS_ALLOC_FAILED: return "CUSPARSE_STATUS_ALLOC_FAILED";
    case CUSPARSE_STATUS_INVALID_VALUE: return "CUSPARSE_STATUS_INVALID_VALUE";
    case CUSPARSE_STATUS_ARCH_MISMATCH: return "CUSPARSE_STATUS_ARCH_MISMATCH";
    case CUSPARSE_STATUS_MAPPING_ERROR: return "CUSPARSE_STATUS_MAPPING_ERROR";
    case CUSPARSE_STATUS_EXECUTION_FAILED: return "CUSPARSE_STATUS_EXECUTION_FAILED";
    case CUSPARSE_STATUS_INTERNAL_ERROR: return "CUSPARSE_STATUS_INTERNAL_ERROR";
    case CUSPARSE_STATUS_MATRIX_TYPE_NOT_SUPPORTED: return "CUSPARSE_STATUS_MATRIX_TYPE_NOT_SUPPORTED";
    case CUSPARSE_STATUS_ZERO_PIVOT: return "CUSPARSE_STATUS_ZERO_PIVOT";
    case CUSPARSE_STATUS_NOT_SUPPORTED: return "CUSPARSE_STATUS_NOT_SUPPORTED";
    case CUSPARSE_STATUS_INSUFFICIENT_RESOURCES: return "CUSPARSE_STATUS_INSUFFICIENT_RESOURCES";
    default: return "unrecognized error code";
  }
}

const char* status_string(int s) {
  switch (s) {
    case CUSPARSE_STATUS_SUCCESS: return "success";
    case CUSPARSE_STATUS_NOT_INITIALIZED: return "initialization error";
    case CUSPARSE_STATUS_ALLOC_FAILED: return "out of memory";
    case CUSPARSE_STATUS_INVALID_VALUE: return "invalid value";
    case CUSPARSE_STATUS_ARCH_MISMATCH: return "architecture mismatch";
    case CUSPARSE_STATUS_MAPPING_ERROR: return "mapping error";
    case CUSPARSE_STATUS_EXECUTION_FAILED: return "execution failed";
    case CUSPARSE_STATUS_INTERNAL_ERROR: return "internal error";
    case CUSPARSE_STATUS_MATRIX_TYPE_NOT_SUPPORTED: return "matrix type not supported";
    case CUSPARSE_STATUS_ZERO_PIVOT: return "zero pivot";
    case CUSPARSE_STATUS_NOT_SUPPORTED: return "operation not supported";
    case CUSPARSE_STATUS_INSUFFICIENT_RESOURCES: return "insufficient resources";
    default: return "unrecognized error code";
  }
}

// ---- number formats ---------------------------------------------------------------------------------
uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// A binary float format of 1 + ebits + mbits bits with exponent bias `bias`. fn: no infinity, the
// all-ones code is NaN (E4M3 "fn").
struct Small {
  int ebits, mbits, bias;
  bool fn;
  double max_finite;
};
constexpr Small kHalf{5, 10, 15, false, 65504.0};
constexpr Small kE4M3{4, 3, 7, true, 448.0};
constexpr Small kE5M2{5, 2, 15, false, 57344.0};

float small_decode(uint32_t v, const Small& f) {
  const uint32_t emask = (1u << f.ebits) - 1, mmask = (1u << f.mbits) - 1;
  const bool neg = (v >> (f.ebits + f.mbits)) & 1u;
  const uint32_t e = (v >> f.mbits) & emask, m = v & mmask;
  double mag;
  if (f.fn && e == emask && m == mmask) return std::numeric_limits<float>::quiet_NaN();
  if (!f.fn && e == emask) {
    if (m != 0) return std::numeric_limits<float>::quiet_NaN();
    mag = std::numeric_limits<double>::infinity();
  } else if (e == 0) {
    mag = std::ldexp(static_cast<double>(m), 1 - f.bias - f.mbits);
  } else {
    mag = std::ldexp(1.0 + std::ldexp(static_cast<double>(m), -f.mbits), static_cast<int>(e) - f.bias);
  }
  return static_cast<float>(neg ? -mag : mag);
}

// The code of a finite magnitude that is exactly representable in f.
uint32_t small_magnitude_code(double r, const Small& f) {
  if (r == 0.0) return 0;
  int e2 = 0;
  std::frexp(r, &e2);
  const int E = e2 - 1, emin = 1 - f.bias;
  if (E < emin) return static_cast<uint32_t>(std::ldexp(r, f.mbits - emin));  // subnormal
  const uint32_t m = static_cast<uint32_t>((std::ldexp(r, -E) - 1.0) * std::ldexp(1.0, f.mbits));
  return (static_cast<uint32_t>(E + f.bias) << f.mbits) | m;
}

// Round to nearest even. satfinite: out-of-range values (inf included) become +-max_finite (cuda_fp8
// __NV_SATFINITE), else overflow gives infinity. NaN becomes nan_code.
uint32_t small_encode(float x, const Small& f, bool satfinite, uint32_t nan_code) {
  const uint32_t sign = (f32_bits(x) >> 31) << (f.ebits + f.mbits);
  if (std::isnan(x)) return nan_code;
  const uint32_t inf_code = ((1u << f.ebits) - 1) << f.mbits;
  const double a = std::fabs(static_cast<double>(x));
  if (std::isinf(a)) return sign | (satfinite ? small_magnitude_code(f.max_finite, f) : inf_code);
  if (a == 0.0) return sign;
  int e2 = 0;
  std::frexp(a, &e2);
  const int E = std::max(e2 - 1, 1 - f.bias);
  const double q = std::ldexp(1.0, E - f.mbits);
  const double r = std::nearbyint(a / q) * q;  // a / q is exact (a power of two); nearbyint: ties to even
  if (r > f.max_finite) return sign | (satfinite ? small_magnitude_code(f.max_finite, f) : inf_code);
  return sign | small_magnitude_code(r, f);
}

float half_to_float(uint16_t h) { return small_decode(h, kHalf); }
uint16_t float_to_half(float x) { return static_cast<uint16_t>(small_encode(x, kHalf, false, 0x7FFFu)); }
float bf16_to_float(uint16_t b) { return bits_f32(static_cast<uint32_t>(b) << 16); }
uint16_t float_to_bf16(float x) {
  const uint32_t u = f32_bits(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FFFu;
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
float e4m3_to_float(uint8_t v) { return small_decode(v, kE4M3); }
uint8_t float_to_e4m3(float x) { return static_cast<uint8_t>(small_encode(x, kE4M3, true, 0x7Fu)); }
float e5m2_to_float(uint8_t v) { return small_decode(v, kE5M2); }
uint8_t float_to_e5m2(float x) { return static_cast<uint8_t>(small_encode(x, kE5M2, true, 0x7Fu)); }

// TF32: 10 mantissa bits, round to nearest with ties away from zero.
float to_tf32(float x) {
  const uint32_t u = f32_bits(x);
  if ((u & 0x7F800000u) == 0x7F800000u) return x;
  return bits_f32((u + 0x1000u) & 0xFFFFE000u);
}

float load(int t, const void* base, int64_t i) {
  const unsigned char* p = static_cast<const unsigned char*>(base);
  switch (t) {
    case CUDA_R_16F: {
      uint16_t v;
      std::memcpy(&v, p + 2 * i, 2);
      return half_to_float(v);
    }
    case CUDA_R_16BF: {
      uint16_t v;
      std::memcpy(&v, p + 2 * i, 2);
      return bf16_to_float(v);
    }
    case CUDA_R_32F: {
      float v;
      std::memcpy(&v, p + 4 * i, 4);
      return v;
    }
    case CUDA_R_32I: {
      int32_t v;
      std::memcpy(&v, p + 4 * i, 4);
      return static_cast<float>(v);
    }
    case CUDA_R_8I: return static_cast<float>(static_cast<int8_t>(p[i]));
    case CUDA_R_8F_E4M3: return e4m3_to_float(p[i]);
    case CUDA_R_8F_E5M2: return e5m2_to_float(p[i]);
    default: return 0.f;
  }
}

template <typename I>
I saturate_int(float v) {
  if (std::isnan(v)) return 0;
  const double r = std::nearbyint(static_cast<double>(v));
  if (r <= static_cast<double>(std::numeric_limits<I>::min())) return std::numeric_limits<I>::min();
  if (r >= static_cast<double>(std::numeric_limits<I>::max())) return std::numeric_limits<I>::max();
  return static_cast<I>(r);
}

void store(int t, void* base, int64_t i, float v) {
  unsigned char* p = static_cast<unsigned char*>(base);
  switch (t) {
    case CUDA_R_16F: {
      const uint16_t h = float_to_half(v);
      std::memcpy(p + 2 * i, &h, 2);
      break;
    }
    case CUDA_R_16BF: {
      const uint16_t h = float_to_bf16(v);
      std::memcpy(p + 2 * i, &h, 2);
      break;
    }
    case CUDA_R_32F: std::memcpy(p + 4 * i, &v, 4); break;
    case CUDA_R_32I: {
      const int32_t x = saturate_int<int32_t>(v);
      std::memcpy(p + 4 * i, &x, 4);
      break;
    }
    case CUDA_R_8I: p[i] = static_cast<unsigned char>(saturate_int<int8_t>(v)); break;
    case CUDA_R_8F_E4M3: p[i] = float_to_e4m3(v); break;
    case CUDA_R_8F_E5M2: p[i] = float_to_e5m2(v); break;
    default: break;
  }
}

// Whether the element's bits encode a zero (either sign).
bool is_zero(int t, const void* base, int64_t i) {
  const unsigned char* p = static_cast<const unsigned char*>(base);
  switch (t) {
    case CUDA_R_16F:
    case CUDA_R_16BF: {
      uint16_t v;
      std::memcpy(&v, p + 2 * i, 2);
      return (v & 0x7FFFu) == 0;
    }
    case CUDA_R_32F: {
      uint32_t v;
      std::memcpy(&v, p + 4 * i, 4);
      return (v & 0x7FFFFFFFu) == 0;
    }
    case CUDA_R_8I: return p[i] == 0;
    case CUDA_R_8F_E4M3:
    case CUDA_R_8F_E5M2: return (p[i] & 0x7Fu) == 0;
    default: return false;
  }
}

// Products in fp32 without contraction into an FMA (the epilogue rounds each step).
float mul32(float a, float b) {
  volatile float r = a * b;
  return r;
}
float add32(float a, float b) {
  volatile float r = a + b;
  return r;
}
float round_half(float x) { return half_to_float(float_to_half(x)); }

// ---- objects --------------------------------------------------------------------------------------------
// Every object the double initialises starts with this tag (the rest of the 512 bytes is zeroed); the
// state lives in tables keyed by the id.
struct Tag {
  uint64_t magic, id;
};
constexpr uint64_t kMagicHandle = 0x4864626c34327073ULL;  // "sp24dblH"
constexpr uint64_t kMagicMat = 0x4464626c34327073ULL;     // "sp24dblD"
constexpr uint64_t kMagicMatmul = 0x4d64626c34327073ULL;  // "sp24dblM"
constexpr uint64_t kMagicAlg = 0x4164626c34327073ULL;     // "sp24dblA"
constexpr uint64_t kMagicPlan = 0x5064626c34327073ULL;    // "sp24dblP"

Tag read_tag(const void* p) {
  Tag t;
  std::memcpy(&t, p, sizeof t);
  return t;
}
void write_tag(void* p, uint64_t magic, uint64_t id) {
  std::memset(p, 0, 512);
  const Tag t{magic, id};
  std::memcpy(p, &t, sizeof t);
}

struct HandleS {
  bool alive = true;
  int sm = 90;
};
struct MatS {
  bool alive = true;
  uint64_t handle = 0;
  bool structured = false;
  int64_t rows = 0, cols = 0, ld = 0;
  uint32_t alignment = 16;
  int type = CUDA_R_16F;
  int order = CUSPARSE_ORDER_ROW;
};
struct Epilogue {
  int relu = 0, gelu = 0, alpha_vec = 0, beta_vec = 0;
  float relu_upper = std::numeric_limits<float>::infinity(), relu_threshold = 0.f, gelu_scaling = 1.f;
  int64_t bias_stride = 0;
  void* bias = nullptr;
  void* sparse_mat = nullptr;
  int scale_mode[5] = {0, 0, 0, 0, 0};
  void* scale_ptr[5] = {nullptr, nullptr, nullptr, nullptr, nullptr};
};
struct MatmulS {
  uint64_t handle = 0;
  int opA = 0, opB = 0, compute = 0;
  uint64_t ids[4] = {0, 0, 0, 0};  // A, B, C, D
  MatS m[4];
  bool sparseA = true;
  int64_t M = 0, N = 0, K = 0;
  Epilogue epi;
};
struct AlgP {
  int id = 0, max_id = 8, iterations = 5, split_k = 1, mode = CUSPARSELT_SPLIT_K_MODE_ONE_KERNEL, buffers = 0;
  bool split_k_set = false, buffers_set = false;
};
struct AlgS {
  bool alive = true;
  uint64_t handle = 0, matmul = 0;
  MatmulS mm;
  AlgP p;
};
struct PlanS {
  bool alive = true;
  uint64_t handle = 0, matmul = 0, alg = 0;
  MatmulS mm;
  AlgP p;
};

struct State {
  std::mutex mu;
  uint64_t next_id = 1;
  int sm = 90;
  std::unordered_map<uint64_t, HandleS> handles;
  std::unordered_map<uint64_t, MatS> mats;
  std::unordered_map<uint64_t, MatmulS> matmuls;
  std::unordered_map<uint64_t, AlgS> algs;
  std::unordered_map<uint64_t, PlanS> plans;
  int violations = 0;
  std::string last_violation;
  std::string log;
  std::map<std::string, int> armed;
};
// Never destroyed: sp24's thread_local plan caches release their plans during process exit.
State& S() {
  static State* s = new State();
  return *s;
}

// One API call: holds the lock, collects the log line, records violations.
class Call {
 public:
  explicit Call(const char* fn) : fn_(fn), lock_(S().mu) {}
  ~Call() {
    State& s = S();
    s.log += fn_;
    s.log += '(';
    s.log += args_.str();
    s.log += ") -> ";
    s.log += status_name(status_);
    if (injected_) s.log += " (injected by sp24dbl_fail_next)";
    if (!note_.empty()) s.log += " " + note_;
    s.log += '\n';
  }
  Call(const Call&) = delete;
  Call& operator=(const Call&) = delete;
  std::ostringstream& args() { return args_; }
  // sp24dbl_fail_next: this call returns the armed status without doing anything.
  bool injected(cusparseStatus_t* st) {
    auto& armed = S().armed;
    auto it = armed.find(fn_);
    if (it == armed.end()) return false;
    status_ = static_cast<cusparseStatus_t>(it->second);
    armed.erase(it);
    injected_ = true;
    *st = status_;
    return true;
  }
  cusparseStatus_t fail(cusparseStatus_t st, const std::string& rule, const std::string& where) {
    State& s = S();
    ++s.violations;
    s.last_violation = std::string(fn_) + ": " + rule + " [cuSPARSELt docs: " + where + "]";
    status_ = st;
    return st;
  }
  cusparseStatus_t ok(const std::string& note = "") {
    status_ = CUSPARSE_STATUS_SUCCESS;
    note_ = note;
    return status_;
  }
  const char* fn() const { return fn_; }

 private:
  const char* fn_;
  std::unique_lock<std::mutex> lock_;
  std::ostringstream args_;
  cusparseStatus_t status_ = CUSPARSE_STATUS_SUCCESS;
  bool injected_ = false;
  std::string note_;
};

#define SP24DBL_INJECT(call)                 \
  do {                                       \
    cusparseStatus_t inj_;                   \
    if ((call).injected(&inj_)) return inj_; \
  } while (0)
#define SP24DBL_TRY(expr)                                       \
  do {                                                          \
    const cusparseStatus_t try_ = (expr);                       \
    if (try_ != CUSPARSE_STATUS_SUCCESS) return try_;           \
  } while (0)

constexpr cusparseStatus_t kOk = CUSPARSE_STATUS_SUCCESS;
constexpr cusparseStatus_t kInvalid = CUSPARSE_STATUS_INVALID_VALUE;
constexpr cusparseStatus_t kNotSupported = CUSPARSE_STATUS_NOT_SUPPORTED;

std::string id_name(char prefix, uint64_t id) { return std::string(1, prefix) + std::to_string(id); }

// How the log names an object argument (read before any check: a NULL or foreign pointer is shown so).
std::string obj_arg(const void* p, uint64_t magic, char prefix) {
  if (p == nullptr) return "NULL";
  const Tag t = read_tag(p);
  if (t.magic != magic) return "uninitialised";
  return id_name(prefix, t.id);
}
std::string handle_arg(const cusparseLtHandle_t* h) { return obj_arg(h, kMagicHandle, 'h'); }
std::string mat_arg(const cusparseLtMatDescriptor_t* d) { return obj_arg(d, kMagicMat, 'd'); }
std::string matmul_arg(const cusparseLtMatmulDescriptor_t* d) { return obj_arg(d, kMagicMatmul, 'm'); }
std::string alg_arg(const cusparseLtMatmulAlgSelection_t* a) { return obj_arg(a, kMagicAlg, 'a'); }
std::string plan_arg(const cusparseLtMatmulPlan_t* p) { return obj_arg(p, kMagicPlan, 'p'); }
std::string ptr_arg(const void* p) { return p ? "set" : "NULL"; }

// ---- lookups (each fails the call with the rule when the object cannot be used) --------------------------
cusparseStatus_t need_handle(Call& c, const cusparseLtHandle_t* h, uint64_t* id, HandleS** out = nullptr) {
  // choice (1): the docs say "will return an error"; INVALID_VALUE as measured.
  if (h == nullptr) return c.fail(kInvalid, "handle is NULL", cite(doc::kInit, true));
  const Tag t = read_tag(h);
  if (t.magic != kMagicHandle) {
    return c.fail(kInvalid, "handle was not initialised by cusparseLtInit", cite(doc::kInit, true));
  }
  auto it = S().handles.find(t.id);
  if (it == S().handles.end()) {
    return c.fail(kInvalid, "handle " + id_name('h', t.id) + " is unknown (its state was forgotten by sp24dbl_reset)",
                  cite(doc::kInit, true));
  }
  if (!it->second.alive) {
    return c.fail(kInvalid, "handle " + id_name('h', t.id) + " was destroyed by cusparseLtDestroy", cite(doc::kInit, true));
  }
  *id = t.id;
  if (out) *out = &it->second;
  return kOk;
}

cusparseStatus_t belongs(Call& c, const std::string& what, uint64_t owner, uint64_t hid) {
  if (hid == 0 || owner == hid) return kOk;
  // choice (1): objects belong to the handle (library context) that initialised them.
  return c.fail(kInvalid, what + " was initialised with handle " + id_name('h', owner) + ", not with handle " + id_name('h', hid),
                cite(doc::kInit, true));
}

cusparseStatus_t need_mat(Call& c, const cusparseLtMatDescriptor_t* d, const char* what, uint64_t hid, uint64_t* id,
                          MatS** out) {
  if (d == nullptr) return c.fail(kInvalid, std::string(what) + " is NULL", cite(doc::kMatmulInit, true));
  const Tag t = read_tag(d);
  if (t.magic != kMagicMat) {
    return c.fail(kInvalid,
                  std::string(what) +
                      " was not initialised by cusparseLtDenseDescriptorInit or cusparseLtStructuredDescriptorInit",
                  cite(doc::kDense, true));
  }
  auto it = S().mats.find(t.id);
  if (it == S().mats.end()) {
    return c.fail(kInvalid, std::string(what) + " (" + id_name('d', t.id) + ") is unknown (forgotten by sp24dbl_reset)",
                  cite(doc::kDense, true));
  }
  if (!it->second.alive) {
    return c.fail(kInvalid,
                  std::string(what) + " (" + id_name('d', t.id) + ") was destroyed by cusparseLtMatDescriptorDestroy",
                  cite(doc::kMatDestroy));
  }
  SP24DBL_TRY(belongs(c, std::string(what) + " (" + id_name('d', t.id) + ")", it->second.handle, hid));
  *id = t.id;
  *out = &it->second;
  return kOk;
}

// What an opaque object argument of one kind must be: initialised by its Init, known to the double,
// not destroyed (kinds with a Destroy), and made with the same handle.
struct ObjKind {
  const char* name;          // the argument, as the docs name it
  char letter;               // id_name prefix
  uint64_t magic;
  const char* init;          // the function that initialises it
  const char* init_doc;
  const char* destroy;       // nullptr: the kind has no Destroy
  const char* destroy_doc;
};
const ObjKind kMatmulKind{"matmulDescr", 'm', kMagicMatmul, "cusparseLtMatmulDescriptorInit", doc::kMatmulInit, nullptr, nullptr};
const ObjKind kAlgKind{"algSelection", 'a', kMagicAlg, "cusparseLtMatmulAlgSelectionInit", doc::kAlgInit,
                           "cusparseLtMatmulAlgSelectionDestroy", doc::kAlgDestroy};
// docs (plan): "Calling any cusparseLt function which uses cusparseLtMatmulPlan_t after
// cusparseLtMatmulPlanDestroy() will return an error"
const ObjKind kPlanKind{"plan", 'p', kMagicPlan, "cusparseLtMatmulPlanInit", doc::kPlanInit,
                            "cusparseLtMatmulPlanDestroy", doc::kPlanDestroy};

template <typename Obj>
bool not_destroyed(const Obj& o) {
  return o.alive;
}
bool not_destroyed(const MatmulS&) { return true; }  // a matmul descriptor has no Destroy

template <typename Obj, typename Arg>
cusparseStatus_t need_object(Call& c, const ObjKind& k, std::unordered_map<uint64_t, Obj>& objects, const Arg* arg,
                             uint64_t hid, uint64_t* id, Obj** out) {
  const std::string name = k.name;
  if (arg == nullptr) return c.fail(kInvalid, name + " is NULL", cite(k.init_doc, true));
  const Tag t = read_tag(arg);
  if (t.magic != k.magic) return c.fail(kInvalid, name + " was not initialised by " + k.init, cite(k.init_doc, true));
  const std::string named = name + " " + id_name(k.letter, t.id);
  auto it = objects.find(t.id);
  if (it == objects.end()) return c.fail(kInvalid, named + " is unknown (forgotten by sp24dbl_reset)", cite(k.init_doc, true));
  if (!not_destroyed(it->second)) return c.fail(kInvalid, named + " was destroyed by " + k.destroy, cite(k.destroy_doc));
  SP24DBL_TRY(belongs(c, named, it->second.handle, hid));
  *id = t.id;
  *out = &it->second;
  return kOk;
}

cusparseStatus_t need_matmul(Call& c, const cusparseLtMatmulDescriptor_t* d, uint64_t hid, uint64_t* id, MatmulS** out) {
  return need_object(c, kMatmulKind, S().matmuls, d, hid, id, out);
}
cusparseStatus_t need_alg(Call& c, const cusparseLtMatmulAlgSelection_t* a, uint64_t hid, uint64_t* id, AlgS** out) {
  return need_object(c, kAlgKind, S().algs, a, hid, id, out);
}
cusparseStatus_t need_plan(Call& c, const cusparseLtMatmulPlan_t* p, uint64_t hid, uint64_t* id, PlanS** out) {
  return need_object(c, kPlanKind, S().plans, p, hid, id, out);
}

// docs (cusparseLtMatDescriptorDestroy): "After this call, the matrix descriptor, the matmul
// descriptor, and the plan can no longer be used."
cusparseStatus_t mats_alive(Call& c, const MatmulS& mm, const std::string& user) {
  static const char* const names[4] = {"matA", "matB", "matC", "matD"};
  for (int i = 0; i < 4; ++i) {
    auto it = S().mats.find(mm.ids[i]);
    if (it == S().mats.end() || !it->second.alive) {
      return c.fail(kInvalid,
                    std::string(names[i]) + " (" + id_name('d', mm.ids[i]) + ") of " + user +
                        " was destroyed; after cusparseLtMatDescriptorDestroy the matmul descriptor and the plan can no "
                        "longer be used",
                    cite(doc::kMatDestroy));
    }
  }
  return kOk;
}

bool aligned(const void* p, uint32_t a) {
  const uintptr_t u = reinterpret_cast<uintptr_t>(p);
  return (u % 16u) == 0 && (a == 0 || (u % a) == 0);
}

std::string hex(const void* p) {
  std::ostringstream os;
  os << p;
  return os.str();
}

// ---- descriptors ------------------------------------------------------------------------------------------
int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// sp24's cslt_bytes (csrc/sp24/cslt_layout.h) for the descriptor's rows x cols: see choice (14).
int64_t compressed_bytes(const MatS& m) {
  const int64_t es = type_bytes(m.type);
  return m.rows * (m.cols / 2) * es + round_up(m.rows, 128) * round_up(m.cols, 128) / 8;
}
int64_t compress_buffer_bytes(const MatS& m) { return round_up(m.rows * m.cols / 8, 256); }

// The stored extent of a dense matrix in elements.
int64_t dense_span(const MatS& m) {
  const int64_t outer = m.order == CUSPARSE_ORDER_ROW ? m.rows : m.cols;
  const int64_t inner = m.order == CUSPARSE_ORDER_ROW ? m.cols : m.rows;
  return (outer - 1) * m.ld + inner;
}

cusparseStatus_t mat_init(Call& c, const cusparseLtHandle_t* handle, cusparseLtMatDescriptor_t* d, int64_t rows,
                          int64_t cols, int64_t ld, uint32_t alignment, int type, int order, bool structured,
                          int sparsity) {
  const char* const where = structured ? doc::kStructured : doc::kDense;
  uint64_t hid = 0;
  SP24DBL_TRY(need_handle(c, handle, &hid));
  if (d == nullptr) return c.fail(kInvalid, "matDescr is NULL", cite(where, true));
  // docs table: rows, cols, ld (positive: choice, measured INVALID_VALUE for 0)
  if (rows <= 0 || cols <= 0 || ld <= 0) {
    return c.fail(kInvalid,
                  "rows = " + std::to_string(rows) + ", cols = " + std::to_string(cols) + ", ld = " + std::to_string(ld) +
                      ": all must be positive",
                  cite(where, true));
  }
  // docs table: order CUSPARSE_ORDER_COL, CUSPARSE_ORDER_ROW
  if (order != CUSPARSE_ORDER_ROW && order != CUSPARSE_ORDER_COL) {
    return c.fail(kInvalid, "order = " + std::to_string(order) + " is not CUSPARSE_ORDER_COL or CUSPARSE_ORDER_ROW",
                  cite(where));
  }
  // docs table: valueType (0.8: 32F, 16F, 16BF, 8I, 8F_E4M3, 8F_E5M2, 4F_E2M1; dense also 32I outputs)
  const bool valid = type == CUDA_R_16F || type == CUDA_R_16BF || type == CUDA_R_32F || type == CUDA_R_8I ||
                     type == CUDA_R_8F_E4M3 || type == CUDA_R_8F_E5M2 || (!structured && type == CUDA_R_32I);
  if (!valid) {
    if (type == CUDA_R_4F_E2M1 || type == CUDA_R_8F_UE8M0) {
      // choice (6): block-scaled types are not modelled
      return c.fail(kInvalid, "valueType " + type_name(type) + " (block-scaled) is not modelled by the double",
                    cite(where, true));
    }
    return c.fail(kInvalid,
                  "valueType " + type_name(type) + " is not a " + (structured ? "structured" : "dense") +
                      " matrix type (CUDA_R_16F, CUDA_R_16BF, CUDA_R_32F, CUDA_R_8I, CUDA_R_8F_E4M3, CUDA_R_8F_E5M2" +
                      (structured ? ")" : ", CUDA_R_32I)"),
                  cite(where));
  }
  // docs table: sparsity CUSPARSELT_SPARSITY_50_PERCENT
  if (structured && sparsity != CUSPARSELT_SPARSITY_50_PERCENT) {
    return c.fail(kInvalid, "sparsity = " + std::to_string(sparsity) + " is not CUSPARSELT_SPARSITY_50_PERCENT", cite(where));
  }
  // docs table: ld >= rows if column-major, >= cols if row-major
  const int64_t need = order == CUSPARSE_ORDER_ROW ? cols : rows;
  if (ld < need) {
    return c.fail(kInvalid,
                  "ld = " + std::to_string(ld) + " < " + (order == CUSPARSE_ORDER_ROW ? "cols" : "rows") + " = " +
                      std::to_string(need) + " (ld must be >= cols if row-major, >= rows if column-major)",
                  cite(where));
  }
  // docs table: alignment "Memory alignment in bytes", "Multiple of 16" (status: choice (2), measured)
  if (alignment == 0 || alignment % 16 != 0) {
    return c.fail(kNotSupported, "alignment = " + std::to_string(alignment) + " bytes is not a multiple of 16",
                  cite(where) + "; status NOT_SUPPORTED as measured");
  }
  // docs Constrains: rows, cols and ld multiples of 16 (8-bit) / 8 (16-bit) / 4 (32-bit) for dense,
  // 32 / 16 / 8 for structured; FP8 follows the 8-bit row (choice (3)); status: choice (2)
  const int es = type_bytes(type);
  const int64_t mult = (structured ? 32 : 16) / es;
  const char* dim = rows % mult ? "rows" : cols % mult ? "cols" : ld % mult ? "ld" : nullptr;
  if (dim != nullptr) {
    const int64_t v = rows % mult ? rows : cols % mult ? cols : ld;
    return c.fail(kNotSupported,
                  std::string(dim) + " = " + std::to_string(v) + " is not a multiple of " + std::to_string(mult) + " (" +
                      (structured ? "structured " : "dense ") + type_name(type) + ": rows, cols and ld multiples of " +
                      std::to_string(mult) + ")",
                  cite(where) + "; status NOT_SUPPORTED as measured");
  }
  // docs Constrains: "The total size of the matrix cannot exceed" 2^32-1 (8-bit), 2^31-1 (16-bit),
  // 2^30-1 (32-bit) elements; counted as the stored extent (choice (2))
  const int64_t limit = es == 1 ? (int64_t{1} << 32) - 1 : es == 2 ? (int64_t{1} << 31) - 1 : (int64_t{1} << 30) - 1;
  int64_t extent = 0;
  if (__builtin_mul_overflow(order == CUSPARSE_ORDER_ROW ? rows : cols, ld, &extent) || extent > limit) {
    return c.fail(kInvalid,
                  std::string("the matrix spans ") + (order == CUSPARSE_ORDER_ROW ? "rows" : "cols") + " x ld = " +
                      std::to_string(order == CUSPARSE_ORDER_ROW ? rows : cols) + " x " + std::to_string(ld) +
                      " elements, more than the " + std::to_string(limit) + " allowed for " + type_name(type),
                  cite(where, true));
  }
  State& s = S();
  const uint64_t id = s.next_id++;
  MatS m;
  m.handle = hid;
  m.structured = structured;
  m.rows = rows;
  m.cols = cols;
  m.ld = ld;
  m.alignment = alignment;
  m.type = type;
  m.order = order;
  s.mats[id] = m;
  write_tag(d, kMagicMat, id);
  return c.ok("[" + id_name('d', id) + "]");
}

// ---- the type table -------------------------------------------------------------------------------------
// index.html Key Features (0.8.0): Input A/B, Input C, Output D, Compute (non-block-scaled rows).
bool in_type_table(int ab, int cT, int dT, int compute) {
  switch (ab) {
    case CUDA_R_32F: return cT == CUDA_R_32F && dT == CUDA_R_32F && compute == CUSPARSE_COMPUTE_32F;
    case CUDA_R_16BF: return cT == CUDA_R_16BF && dT == CUDA_R_16BF && compute == CUSPARSE_COMPUTE_32F;
    case CUDA_R_16F:
      return cT == CUDA_R_16F && dT == CUDA_R_16F && (compute == CUSPARSE_COMPUTE_32F || compute == CUSPARSE_COMPUTE_16F);
    case CUDA_R_8I:
      return compute == CUSPARSE_COMPUTE_32I && cT == dT &&
             (cT == CUDA_R_8I || cT == CUDA_R_32I || cT == CUDA_R_16F || cT == CUDA_R_16BF);
    case CUDA_R_8F_E4M3:
    case CUDA_R_8F_E5M2:
      if (compute != CUSPARSE_COMPUTE_32F) return false;
      if (dT == ab) return cT == CUDA_R_16F || cT == CUDA_R_16BF;
      return cT == dT && (cT == CUDA_R_16F || cT == CUDA_R_16BF || cT == CUDA_R_32F);
    default: return false;
  }
}

// K-major (K contiguous) operands: A with (N, row-major) or (T, column-major); B with (N, column-major)
// or (T, row-major).
bool a_k_major(int op, int order) {
  return (op == CUSPARSE_OPERATION_NON_TRANSPOSE) == (order == CUSPARSE_ORDER_ROW);
}
bool b_k_major(int op, int order) {
  return (op == CUSPARSE_OPERATION_NON_TRANSPOSE) == (order == CUSPARSE_ORDER_COL);
}

// ---- the structured operand's geometry -------------------------------------------------------------------
// op(S) seen as P rows (the dimension without K) of Kd elements along K; (p, k) -> stored (r, c).
struct Geom {
  int64_t P = 0, Kd = 0;
  bool k_is_cols = true;
};
Geom geom(const MatS& m, bool isA, int op) {
  Geom g;
  g.k_is_cols = isA ? (op == CUSPARSE_OPERATION_NON_TRANSPOSE) : (op == CUSPARSE_OPERATION_TRANSPOSE);
  g.P = g.k_is_cols ? m.rows : m.cols;
  g.Kd = g.k_is_cols ? m.cols : m.rows;
  return g;
}
int64_t offset(const MatS& m, int64_t r, int64_t c) {
  return m.order == CUSPARSE_ORDER_ROW ? r * m.ld + c : c * m.ld + r;
}
int64_t geom_offset(const MatS& m, const Geom& g, int64_t p, int64_t k) {
  return g.k_is_cols ? offset(m, p, k) : offset(m, k, p);
}
int64_t used_compressed_bytes(const MatS& m, const Geom& g) {
  return g.P * (g.Kd / 2) * type_bytes(m.type) + g.P * g.Kd / 8;
}

// The first group along K that breaks the structure (2:4, or 1:2 for FP32), or false.
bool find_unstructured(const MatS& m, const Geom& g, const void* dense, int64_t* bad_p, int64_t* bad_g, int* count) {
  for (int64_t p = 0; p < g.P; ++p) {
    for (int64_t q = 0; q < g.Kd / 4; ++q) {
      int nz[4] = {0, 0, 0, 0};
      for (int j = 0; j < 4; ++j) nz[j] = is_zero(m.type, dense, geom_offset(m, g, p, 4 * q + j)) ? 0 : 1;
      const int n = nz[0] + nz[1] + nz[2] + nz[3];
      const bool bad = m.type == CUDA_R_32F ? (nz[0] + nz[1] > 1 || nz[2] + nz[3] > 1) : n > 2;
      if (bad) {
        *bad_p = p;
        *bad_g = q;
        *count = n;
        return true;
      }
    }
  }
  return false;
}

// Writes the private compressed layout (choice (14)); the structure was checked.
void compress_into(const MatS& m, const Geom& g, const void* dense, void* out, void* scratch, int64_t reported) {
  const int es = type_bytes(m.type);
  const unsigned char* src = static_cast<const unsigned char*>(dense);
  unsigned char* vals = static_cast<unsigned char*>(out);
  unsigned char* meta = static_cast<unsigned char*>(scratch);
  const int64_t meta_bytes = g.P * g.Kd / 8;
  std::memset(meta, 0, static_cast<size_t>(meta_bytes));
  for (int64_t p = 0; p < g.P; ++p) {
    for (int64_t q = 0; q < g.Kd / 4; ++q) {
      int i0 = 2, i1 = 3;
      if (m.type == CUDA_R_32F) {  // 1:2: one of each pair
        i0 = is_zero(m.type, dense, geom_offset(m, g, p, 4 * q)) ? 1 : 0;
        i1 = is_zero(m.type, dense, geom_offset(m, g, p, 4 * q + 2)) ? 3 : 2;
      } else {
        int nz[4], n = 0;
        for (int j = 0; j < 4; ++j)
          if (!is_zero(m.type, dense, geom_offset(m, g, p, 4 * q + j))) nz[n++] = j;
        if (n >= 2) {
          i0 = nz[0];
          i1 = nz[1];
        } else if (n == 1) {  // padded from the right
          i0 = nz[0] == 3 ? 2 : nz[0];
          i1 = 3;
        }
      }
      const int64_t slot = p * (g.Kd / 2) + 2 * q;
      std::memcpy(vals + slot * es, src + geom_offset(m, g, p, 4 * q + i0) * es, static_cast<size_t>(es));
      std::memcpy(vals + (slot + 1) * es, src + geom_offset(m, g, p, 4 * q + i1) * es, static_cast<size_t>(es));
      const int64_t nib = p * (g.Kd / 4) + q;
      meta[nib / 2] = static_cast<unsigned char>(meta[nib / 2] | ((i0 | (i1 << 2)) << (4 * (nib & 1))));
    }
  }
  const int64_t vbytes = g.P * (g.Kd / 2) * es;
  std::memcpy(vals + vbytes, meta, static_cast<size_t>(meta_bytes));
  const int64_t used = vbytes + meta_bytes;
  if (reported > used) std::memset(vals + used, 0, static_cast<size_t>(reported - used));
}

// op(S) as P x Kd floats (row-major) from the private layout.
void decompress(const MatS& m, const Geom& g, const void* comp, bool tf32, std::vector<float>* out) {
  const int es = type_bytes(m.type);
  out->assign(static_cast<size_t>(g.P * g.Kd), 0.f);
  const unsigned char* meta = static_cast<const unsigned char*>(comp) + g.P * (g.Kd / 2) * es;
  for (int64_t p = 0; p < g.P; ++p) {
    for (int64_t q = 0; q < g.Kd / 4; ++q) {
      const int64_t nib = p * (g.Kd / 4) + q;
      const int code = (meta[nib / 2] >> (4 * (nib & 1))) & 15;
      const int i0 = code & 3, i1 = (code >> 2) & 3;
      float v0 = load(m.type, comp, p * (g.Kd / 2) + 2 * q), v1 = load(m.type, comp, p * (g.Kd / 2) + 2 * q + 1);
      if (tf32) {
        v0 = to_tf32(v0);
        v1 = to_tf32(v1);
      }
      float* row = out->data() + p * g.Kd + 4 * q;
      if (i0 == i1) {
        row[i0] = v0 + v1;  // invalid metadata: both values land on one position
      } else {
        row[i0] = v0;
        row[i1] = v1;
      }
    }
  }
}

// ---- the product ------------------------------------------------------------------------------------------
int64_t workspace_bytes(const MatmulS& mm, const AlgP& p) {
  int64_t ws = 256;
  if (p.split_k > 1) ws += mm.M * mm.N * 4 * std::max(1, p.buffers);
  return ws;
}

int bias_type(const MatmulS& mm) { return is_8bit(mm.m[0].type) ? CUDA_R_32F : mm.m[3].type; }

struct ExecArgs {
  const void* alpha;
  const void* A;
  const void* B;
  const void* beta;
  const void* C;
  void* D;
  void* ws;
};

// D = alpha op(A) op(B) + beta C (+ bias); choices (12), (13).
void compute(const MatmulS& mm, const AlgP& p, const ExecArgs& x, int64_t ws_bytes) {
  const int64_t M = mm.M, N = mm.N, K = mm.K;
  const MatS &A = mm.m[0], &B = mm.m[1], &C = mm.m[2], &D = mm.m[3];
  const bool tf32 = A.type == CUDA_R_32F;
  std::vector<float> a, bt;  // op(A) M x K; op(B) transposed, N x K
  if (mm.sparseA) {
    decompress(A, geom(A, true, mm.opA), x.A, tf32, &a);
  } else {
    a.resize(static_cast<size_t>(M * K));
    for (int64_t i = 0; i < M; ++i)
      for (int64_t k = 0; k < K; ++k) {
        const float v = load(A.type, x.A, mm.opA == CUSPARSE_OPERATION_NON_TRANSPOSE ? offset(A, i, k) : offset(A, k, i));
        a[static_cast<size_t>(i * K + k)] = tf32 ? to_tf32(v) : v;
      }
  }
  if (!mm.sparseA) {
    decompress(B, geom(B, false, mm.opB), x.B, tf32, &bt);
  } else {
    bt.resize(static_cast<size_t>(N * K));
    for (int64_t j = 0; j < N; ++j)
      for (int64_t k = 0; k < K; ++k) {
        const float v = load(B.type, x.B, mm.opB == CUSPARSE_OPERATION_NON_TRANSPOSE ? offset(B, k, j) : offset(B, j, k));
        bt[static_cast<size_t>(j * K + k)] = tf32 ? to_tf32(v) : v;
      }
  }
  const Epilogue& e = mm.epi;
  const bool alpha_vec = e.alpha_vec || e.beta_vec;  // docs: BETA_VECTOR_SCALING implies ALPHA_VECTOR_SCALING
  const bool beta_vec = e.beta_vec != 0;
  const float* av = static_cast<const float*>(x.alpha);
  const float* bv = static_cast<const float*>(x.beta);
  float alpha_s = 0.f, beta_s = 0.f;
  if (!alpha_vec) std::memcpy(&alpha_s, x.alpha, 4);
  if (!alpha_vec) std::memcpy(&beta_s, x.beta, 4);
  const int bt_type = bias_type(mm);
  const int64_t splits = std::max(1, p.split_k);
  const int64_t chunk = (K + splits - 1) / splits;
  std::vector<float> out(static_cast<size_t>(M * N));
  for (int64_t i = 0; i < M; ++i) {
    float alpha_i = alpha_s, beta_i = beta_s;
    if (alpha_vec) std::memcpy(&alpha_i, av + i, 4);
    if (beta_vec) std::memcpy(&beta_i, bv + i, 4);
    const bool use_c = alpha_vec && !beta_vec ? false : beta_i != 0.f;  // choice (12)
    const float* ar = a.data() + i * K;
    for (int64_t j = 0; j < N; ++j) {
      const float* br = bt.data() + j * K;
      float acc = 0.f;
      for (int64_t s = 0; s < splits; ++s) {
        const int64_t k0 = s * chunk, k1 = std::min(K, k0 + chunk);
        float part = 0.f;
        if (mm.compute == CUSPARSE_COMPUTE_32I) {
          int64_t sum = 0;
          for (int64_t k = k0; k < k1; ++k) sum += static_cast<int64_t>(ar[k]) * static_cast<int64_t>(br[k]);
          part = static_cast<float>(sum);
        } else if (mm.compute == CUSPARSE_COMPUTE_16F) {
          for (int64_t k = k0; k < k1; ++k) part = round_half(part + ar[k] * br[k]);
        } else {
          for (int64_t k = k0; k < k1; ++k) part = add32(part, ar[k] * br[k]);  // fp16/bf16/fp8/tf32 products are exact
        }
        acc = s == 0 ? part : add32(acc, part);
      }
      float v = mul32(alpha_i, acc);
      if (use_c) v = add32(v, mul32(beta_i, load(C.type, x.C, offset(C, i, j))));
      if (e.bias != nullptr) v = add32(v, load(bt_type, e.bias, i));
      out[static_cast<size_t>(i * N + j)] = v;
    }
  }
  // the workspace is the double's to overwrite (an undersized allocation shows under ASan)
  if (x.ws != nullptr && ws_bytes > 0) std::memset(x.ws, 0x5A, static_cast<size_t>(ws_bytes));
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) store(D.type, x.D, offset(D, i, j), out[static_cast<size_t>(i * N + j)]);
}

bool overlap(const void* a, int64_t abytes, const void* b, int64_t bbytes) {
  const uintptr_t x = reinterpret_cast<uintptr_t>(a), y = reinterpret_cast<uintptr_t>(b);
  return x < y + static_cast<uintptr_t>(bbytes) && y < x + static_cast<uintptr_t>(abytes);
}

// The shared body of cusparseLtMatmul and cusparseLtMatmulSearch.
cusparseStatus_t exec(Call& c, const cusparseLtHandle_t* handle, const cusparseLtMatmulPlan_t* plan, const ExecArgs& x,
                      cudaStream_t* streams, int32_t numStreams, bool search) {
  const char* const where = search ? doc::kSearch : doc::kMatmul;
  uint64_t hid = 0, pid = 0;
  PlanS* ps = nullptr;
  SP24DBL_TRY(need_handle(c, handle, &hid));
  SP24DBL_TRY(need_plan(c, plan, hid, &pid, &ps));
  const MatmulS& mm = ps->mm;
  SP24DBL_TRY(mats_alive(c, mm, "plan " + id_name('p', pid)));
  AlgS* as = nullptr;
  if (search) {
    // choice (8): the search writes its choice into the plan's selection (docs read it from there)
    auto it = S().algs.find(ps->alg);
    if (it == S().algs.end() || !it->second.alive) {
      return c.fail(kInvalid,
                    "the plan's algSelection " + id_name('a', ps->alg) +
                        " was destroyed; cusparseLtMatmulSearch reports its choice through it",
                    cite(doc::kSearch, true));
    }
    as = &it->second;
  }
  // docs: streams "Pointer to CUDA stream array", numStreams "Number of CUDA streams in streams"
  if (numStreams < 0) {
    return c.fail(kInvalid, "numStreams = " + std::to_string(numStreams) + " is negative", cite(where, true));
  }
  if (numStreams > 0 && streams == nullptr) {
    return c.fail(kInvalid, "streams is NULL with numStreams = " + std::to_string(numStreams), cite(where, true));
  }
  const Epilogue& e = mm.epi;
  const bool alpha_vec = e.alpha_vec || e.beta_vec;
  // docs: alpha/beta "scalar/vector of scalars"; beta "can have a NULL value only if
  // CUSPARSELT_MATMUL_ALPHA_VECTOR_SCALING is set without CUSPARSELT_MATMUL_BETA_VECTOR_SCALING"
  if (x.alpha == nullptr) return c.fail(kInvalid, "alpha is NULL", cite(where));
  if (x.beta == nullptr && !(alpha_vec && !e.beta_vec)) {
    return c.fail(kInvalid, "beta is NULL without ALPHA_VECTOR_SCALING (and without BETA_VECTOR_SCALING)", cite(where));
  }
  const char* const names[4] = {"d_A", "d_B", "d_C", "d_D"};
  const void* const ptrs[4] = {x.A, x.B, x.C, x.D};
  for (int i = 0; i < 4; ++i) {
    if (ptrs[i] == nullptr) return c.fail(kInvalid, std::string(names[i]) + " is NULL", cite(where, true));
  }
  // docs (cusparseLtMatmul, Constrains): "All pointers must be aligned to 16 bytes"; and to the
  // descriptor's `alignment` (choice (11))
  for (int i = 0; i < 4; ++i) {
    if (!aligned(ptrs[i], mm.m[i].alignment)) {
      return c.fail(kInvalid,
                    std::string(names[i]) + " = " + hex(ptrs[i]) + " is not aligned to 16 bytes and to its descriptor's " +
                        std::to_string(mm.m[i].alignment) + "-byte alignment",
                    cite(doc::kMatmul));
    }
  }
  if (alpha_vec && !aligned(x.alpha, 16)) {
    return c.fail(kInvalid, "the alpha vector (ALPHA_VECTOR_SCALING) at " + hex(x.alpha) + " is not 16-byte aligned",
                  cite(doc::kMatmul, true));
  }
  if (e.beta_vec && !aligned(x.beta, 16)) {
    return c.fail(kInvalid, "the beta vector (BETA_VECTOR_SCALING) at " + hex(x.beta) + " is not 16-byte aligned",
                  cite(doc::kMatmul, true));
  }
  if (e.bias != nullptr && !aligned(e.bias, 16)) {
    return c.fail(kInvalid, "the bias pointer " + hex(e.bias) + " is not 16-byte aligned", cite(doc::kMatmul, true));
  }
  const int64_t ws = workspace_bytes(mm, ps->p);
  if (ws > 0 && x.ws == nullptr) {
    return c.fail(kInvalid, "workspace is NULL but cusparseLtMatmulGetWorkspace reports " + std::to_string(ws) + " bytes",
                  cite(doc::kWorkspace, true));
  }
  if (x.ws != nullptr && !aligned(x.ws, 16)) {
    return c.fail(kInvalid, "workspace = " + hex(x.ws) + " is not 16-byte aligned", cite(doc::kMatmul));
  }
  // choice (11): D must not overlap the inputs (C == D is allowed)
  const int sidx = mm.sparseA ? 0 : 1;
  const MatS& sm = mm.m[sidx];
  const Geom sg = geom(sm, mm.sparseA, mm.sparseA ? mm.opA : mm.opB);
  int64_t bytes[4];
  for (int i = 0; i < 4; ++i) bytes[i] = dense_span(mm.m[i]) * type_bytes(mm.m[i].type);
  bytes[sidx] = used_compressed_bytes(sm, sg);
  for (int i = 0; i < 2; ++i) {
    if (overlap(x.D, bytes[3], ptrs[i], bytes[i])) {
      return c.fail(kInvalid, std::string("d_D overlaps ") + names[i] + " (the output may not alias an input operand)",
                    cite(where, true));
    }
  }
  if (x.C != x.D && overlap(x.D, bytes[3], x.C, bytes[2])) {
    return c.fail(kInvalid, "d_C partly overlaps d_D (they must be the same pointer or disjoint)", cite(where, true));
  }
  const int64_t ws_before = ws;
  if (search) {
    // choice (8): the deterministic search
    AlgP& p = ps->p;
    p.id = std::min(3, p.max_id - 1);
    if (!p.split_k_set) {
      p.split_k = mm.K >= 256 ? 2 : 1;
      p.mode = CUSPARSELT_SPLIT_K_MODE_TWO_KERNELS;
      p.buffers = 1;
      p.buffers_set = false;
    }
    as->p.id = p.id;
    as->p.split_k = p.split_k;
    as->p.mode = p.mode;
    as->p.buffers = p.buffers;
    as->p.buffers_set = false;
  }
  compute(mm, ps->p, x, std::min(ws_before, workspace_bytes(mm, ps->p)));
  std::ostringstream note;
  if (search) {
    note << "[chose id " << ps->p.id << ", split-K " << ps->p.split_k << ", mode " << ps->p.mode << ", buffers "
         << ps->p.buffers << "]";
  }
  return c.ok(note.str());
}

// The attribute's value size (0: unknown attribute).
size_t matmul_attr_size(int a) {
  switch (a) {
    case CUSPARSELT_MATMUL_ACTIVATION_RELU:
    case CUSPARSELT_MATMUL_ACTIVATION_GELU:
    case CUSPARSELT_MATMUL_ALPHA_VECTOR_SCALING:
    case CUSPARSELT_MATMUL_BETA_VECTOR_SCALING:
    case CUSPARSELT_MATMUL_A_SCALE_MODE:
    case CUSPARSELT_MATMUL_B_SCALE_MODE:
    case CUSPARSELT_MATMUL_C_SCALE_MODE:
    case CUSPARSELT_MATMUL_D_SCALE_MODE:
    case CUSPARSELT_MATMUL_D_OUT_SCALE_MODE: return sizeof(int);
    case CUSPARSELT_MATMUL_ACTIVATION_RELU_UPPERBOUND:
    case CUSPARSELT_MATMUL_ACTIVATION_RELU_THRESHOLD:
    case CUSPARSELT_MATMUL_ACTIVATION_GELU_SCALING: return sizeof(float);
    case CUSPARSELT_MATMUL_BIAS_STRIDE: return sizeof(int64_t);
    case CUSPARSELT_MATMUL_BIAS_POINTER:
    case CUSPARSELT_MATMUL_SPARSE_MAT_POINTER:
    case CUSPARSELT_MATMUL_A_SCALE_POINTER:
    case CUSPARSELT_MATMUL_B_SCALE_POINTER:
    case CUSPARSELT_MATMUL_C_SCALE_POINTER:
    case CUSPARSELT_MATMUL_D_SCALE_POINTER:
    case CUSPARSELT_MATMUL_D_OUT_SCALE_POINTER: return sizeof(void*);
    default: return 0;
  }
}

const char* matmul_attr_name(int a) {
  switch (a) {
    case CUSPARSELT_MATMUL_ACTIVATION_RELU: return "ACTIVATION_RELU";
    case CUSPARSELT_MATMUL_ACTIVATION_RELU_UPPERBOUND: return "ACTIVATION_RELU_UPPERBOUND";
    case CUSPARSELT_MATMUL_ACTIVATION_RELU_THRESHOLD: return "ACTIVATION_RELU_THRESHOLD";
    case CUSPARSELT_MATMUL_ACTIVATION_GELU: return "ACTIVATION_GELU";
    case CUSPARSELT_MATMUL_ACTIVATION_GELU_SCALING: return "ACTIVATION_GELU_SCALING";
    case CUSPARSELT_MATMUL_ALPHA_VECTOR_SCALING: return "ALPHA_VECTOR_SCALING";
    case CUSPARSELT_MATMUL_BETA_VECTOR_SCALING: return "BETA_VECTOR_SCALING";
    case CUSPARSELT_MATMUL_BIAS_STRIDE: return "BIAS_STRIDE";
    case CUSPARSELT_MATMUL_BIAS_POINTER: return "BIAS_POINTER";
    case CUSPARSELT_MATMUL_SPARSE_MAT_POINTER: return "SPARSE_MAT_POINTER";
    case CUSPARSELT_MATMUL_A_SCALE_MODE: return "A_SCALE_MODE";
    case CUSPARSELT_MATMUL_B_SCALE_MODE: return "B_SCALE_MODE";
    case CUSPARSELT_MATMUL_C_SCALE_MODE: return "C_SCALE_MODE";
    case CUSPARSELT_MATMUL_D_SCALE_MODE: return "D_SCALE_MODE";
    case CUSPARSELT_MATMUL_D_OUT_SCALE_MODE: return "D_OUT_SCALE_MODE";
    case CUSPARSELT_MATMUL_A_SCALE_POINTER: return "A_SCALE_POINTER";
    case CUSPARSELT_MATMUL_B_SCALE_POINTER: return "B_SCALE_POINTER";
    case CUSPARSELT_MATMUL_C_SCALE_POINTER: return "C_SCALE_POINTER";
    case CUSPARSELT_MATMUL_D_SCALE_POINTER: return "D_SCALE_POINTER";
    case CUSPARSELT_MATMUL_D_OUT_SCALE_POINTER: return "D_OUT_SCALE_POINTER";
    default: return "unknown";
  }
}

const char* alg_attr_name(int a) {
  switch (a) {
    case CUSPARSELT_MATMUL_ALG_CONFIG_ID: return "ALG_CONFIG_ID";
    case CUSPARSELT_MATMUL_ALG_CONFIG_MAX_ID: return "ALG_CONFIG_MAX_ID";
    case CUSPARSELT_MATMUL_SEARCH_ITERATIONS: return "SEARCH_ITERATIONS";
    case CUSPARSELT_MATMUL_SPLIT_K: return "SPLIT_K";
    case CUSPARSELT_MATMUL_SPLIT_K_MODE: return "SPLIT_K_MODE";
    case CUSPARSELT_MATMUL_SPLIT_K_BUFFERS: return "SPLIT_K_BUFFERS";
    default: return "unknown";
  }
}

cusparseStatus_t plan_compress_target(Call& c, const cusparseLtHandle_t* handle, const cusparseLtMatmulPlan_t* plan,
                                      const MatS** m, Geom* g, uint64_t* did) {
  uint64_t hid = 0, pid = 0;
  PlanS* ps = nullptr;
  SP24DBL_TRY(need_handle(c, handle, &hid));
  SP24DBL_TRY(need_plan(c, plan, hid, &pid, &ps));
  SP24DBL_TRY(mats_alive(c, ps->mm, "plan " + id_name('p', pid)));
  const int idx = ps->mm.sparseA ? 0 : 1;
  *m = &S().mats[ps->mm.ids[idx]];
  *g = geom(**m, ps->mm.sparseA, ps->mm.sparseA ? ps->mm.opA : ps->mm.opB);
  *did = ps->mm.ids[idx];
  return kOk;
}

cusparseStatus_t compress_impl(Call& c, const MatS& m, uint64_t did, const Geom& g, const void* dense, void* out,
                               void* buffer) {
  const char* const where = doc::kCompress2;
  // docs table: d_dense IN, d_compressed OUT, d_compressed_buffer OUT (device pointers)
  if (dense == nullptr) return c.fail(kInvalid, "d_dense is NULL", cite(where, true));
  if (out == nullptr) return c.fail(kInvalid, "d_compressed is NULL", cite(where, true));
  const int64_t buf = compress_buffer_bytes(m);
  if (buffer == nullptr && buf > 0) {
    // choice (11): stricter than measured runs, which accepted NULL
    return c.fail(kInvalid,
                  "d_compressed_buffer is NULL but cusparseLtSpMMACompressedSize2 reports " + std::to_string(buf) +
                      " bytes for it",
                  cite(doc::kSize2, true));
  }
  if (!aligned(dense, m.alignment)) {
    return c.fail(kInvalid,
                  "d_dense = " + hex(dense) + " is not aligned to 16 bytes and to the descriptor's " +
                      std::to_string(m.alignment) + "-byte alignment",
                  cite(doc::kStructured, true));
  }
  if (!aligned(out, m.alignment)) {
    return c.fail(kInvalid,
                  "d_compressed = " + hex(out) + " is not aligned to 16 bytes and to the descriptor's " +
                      std::to_string(m.alignment) + "-byte alignment",
                  cite(doc::kStructured, true));
  }
  if (buffer != nullptr && !aligned(buffer, 16)) {
    return c.fail(kInvalid, "d_compressed_buffer = " + hex(buffer) + " is not 16-byte aligned", cite(where, true));
  }
  const int64_t reported = compressed_bytes(m);
  if (overlap(dense, dense_span(m) * type_bytes(m.type), out, reported)) {
    return c.fail(kInvalid, "d_compressed overlaps d_dense (compression is not in place)", cite(where, true));
  }
  int64_t bp = 0, bg = 0;
  int n = 0;
  if (find_unstructured(m, g, dense, &bp, &bg, &n)) {
    // choice (15)
    const bool f32 = m.type == CUDA_R_32F;
    return c.fail(kInvalid,
                  std::string("the dense matrix is not ") + (f32 ? "1:2" : "2:4") + " along K (undefined behaviour in cuSPARSELt): " +
                      "row " + std::to_string(bp) + " of op(" + (g.k_is_cols ? "S" : "S^T") + ") has " + std::to_string(n) +
                      " nonzeros in elements " + std::to_string(4 * bg) + ".." + std::to_string(4 * bg + 3) + " (descriptor " +
                      id_name('d', did) + ")",
                  cite(doc::kStructure, true));
  }
  std::vector<unsigned char> own;
  void* scratch = buffer;
  if (scratch == nullptr) {
    own.resize(static_cast<size_t>(std::max<int64_t>(1, g.P * g.Kd / 8)));
    scratch = own.data();
  }
  compress_into(m, g, dense, out, scratch, reported);
  return c.ok();
}

// What cusparseLtMatmulDescSetAttribute and ...GetAttribute check before touching the value: the
// handle and descriptor, the attribute id, data not NULL, and (docs: dataSize "Size in bytes of the
// attribute value used for verification") dataSize equal to the attribute's size.
cusparseStatus_t matmul_attr_args(Call& c, const cusparseLtHandle_t* handle, const cusparseLtMatmulDescriptor_t* matmulDescr,
                                  cusparseLtMatmulDescAttribute_t matmulAttribute, const void* data, size_t dataSize,
                                  MatmulS** out, size_t* size) {
  const std::string where = cite(doc::kMatmulAttr);
  uint64_t hid = 0, id = 0;
  SP24DBL_TRY(need_handle(c, handle, &hid));
  SP24DBL_TRY(need_matmul(c, matmulDescr, hid, &id, out));
  SP24DBL_TRY(mats_alive(c, **out, "matmul descriptor " + id_name('m', id)));
  const size_t want = matmul_attr_size(matmulAttribute);
  if (want == 0) {
    return c.fail(kInvalid, "attribute " + std::to_string(static_cast<int>(matmulAttribute)) +
                                " is not a cusparseLtMatmulDescAttribute_t value",
                  where);
  }
  if (data == nullptr) return c.fail(kInvalid, "data is NULL", where);
  if (dataSize != want) {
    return c.fail(kInvalid,
                  std::string(matmul_attr_name(matmulAttribute)) + " takes " + std::to_string(want) + " bytes, dataSize = " +
                      std::to_string(dataSize),
                  where);
  }
  *size = want;
  return CUSPARSE_STATUS_SUCCESS;
}

// What cusparseLtMatmulAlgSetAttribute and ...GetAttribute check before touching the value: the
// handle and selection, the attribute id, data not NULL, and (docs: dataSize "Size in bytes of the
// attribute value used for verification") dataSize == sizeof(int), the size of every alg attribute.
cusparseStatus_t alg_attr_args(Call& c, const cusparseLtHandle_t* handle, const cusparseLtMatmulAlgSelection_t* algSelection,
                               cusparseLtMatmulAlgAttribute_t attribute, const void* data, size_t dataSize, AlgS** out) {
  const std::string where = cite(doc::kAlgAttr);
  uint64_t hid = 0, id = 0;
  SP24DBL_TRY(need_handle(c, handle, &hid));
  SP24DBL_TRY(need_alg(c, algSelection, hid, &id, out));
  if (static_cast<int>(attribute) < 0 || static_cast<int>(attribute) > static_cast<int>(CUSPARSELT_MATMUL_SPLIT_K_BUFFERS)) {
    return c.fail(kInvalid, "attribute " + std::to_string(static_cast<int>(attribute)) +
                                " is not a cusparseLtMatmulAlgAttribute_t value",
                  where);
  }
  if (data == nullptr) return c.fail(kInvalid, "data is NULL", where);
  if (dataSize != sizeof(int)) {
    return c.fail(kInvalid, std::string(alg_attr_name(attribute)) + " takes " + std::to_string(sizeof(int)) +
                                " bytes, dataSize = " + std::to_string(dataSize),
                  where);
  }
  return CUSPARSE_STATUS_SUCCESS;
}

}  // namespace

// ============================================================================================================
// The cuSPARSELt API
// ============================================================================================================
extern "C" {

const char* CUSPARSELT_API cusparseLtGetErrorName(cusparseStatus_t status) {
  Call c("cusparseLtGetErrorName");
  c.args() << "status=" << static_cast<int>(status);
  c.ok();
  return status_name(status);
}

const char* CUSPARSELT_API cusparseLtGetErrorString(cusparseStatus_t status) {
  Call c("cusparseLtGetErrorString");
  c.args() << "status=" << static_cast<int>(status);
  c.ok();
  return status_string(status);
}

cusparseStatus_t CUSPARSELT_API cusparseLtGetProperty(libraryPropertyType propertyType, int* value) {
  Call c("cusparseLtGetProperty");
  c.args() << "propertyType=" << static_cast<int>(propertyType);
  SP24DBL_INJECT(c);
  if (value == nullptr) return c.fail(kInvalid, "value is NULL", cite(doc::kProperty, true));
  switch (propertyType) {
    case MAJOR_VERSION: *value = CUSPARSELT_VER_MAJOR; break;
    case MINOR_VERSION: *value = CUSPARSELT_VER_MINOR; break;
    case PATCH_LEVEL: *value = CUSPARSELT_VER_PATCH; break;
    default:
      return c.fail(kInvalid, "propertyType = " + std::to_string(static_cast<int>(propertyType)) +
                                  " is not MAJOR_VERSION, MINOR_VERSION or PATCH_LEVEL",
                    cite(doc::kProperty));
  }
  return c.ok("[" + std::to_string(*value) + "]");
}

cusparseStatus_t CUSPARSELT_API cusparseLtGetVersion(const cusparseLtHandle_t* handle, int* version) {
  Call c("cusparseLtGetVersion");
  c.args() << "handle=" << handle_arg(handle);
  SP24DBL_INJECT(c);
  uint64_t hid = 0;
  SP24DBL_TRY(need_handle(c, handle, &hid));
  if (version == nullptr) return c.fail(kInvalid, "version is NULL", cite("functions.html > cusparseLtGetVersion", true));
  *version = CUSPARSELT_VERSION;
  return c.ok();
}

cusparseStatus_t CUSPARSELT_API cusparseLtInit(cusparseLtHandle_t* handle) {
  Call c("cusparseLtInit");
  c.args() << "handle=" << (handle ? "out" : "NULL") << ", sm=" << S().sm;
  SP24DBL_INJECT(c);
  if (handle == nullptr) return c.fail(kInvalid, "handle is NULL", cite(doc::kInit, true));
  State& s = S();
  // docs: supported SM architectures start at 8.0; ARCH_MISMATCH is what the library returns
  // ("cusparseLt currently supports only SM80...", NVIDIA/CUDALibrarySamples#223)
  if (s.sm < 80) {
    return c.fail(CUSPARSE_STATUS_ARCH_MISMATCH,
                  "the GPU is sm_" + std::to_string(s.sm) + "; cuSPARSELt 0.8 supports SM 8.0 and newer",
                  cite(doc::kArch));
  }
  const uint64_t id = s.next_id++;
  HandleS h;
  h.sm = s.sm;
  s.handles[id] = h;
  write_tag(handle, kMagicHandle, id);
  return c.ok("[" + id_name('h', id) + "]");
}

cusparseStatus_t CUSPARSELT_API cusparseLtDestroy(const cusparseLtHandle_t* handle) {
  Call c("cusparseLtDestroy");
  c.args() << "handle=" << handle_arg(handle);
  SP24DBL_INJECT(c);
  uint64_t hid = 0;
  HandleS* h = nullptr;
  SP24DBL_TRY(need_handle(c, handle, &hid, &h));
  h->alive = false;
  return c.ok();
}

cusparseStatus_t CUSPARSELT_API cusparseLtDenseDescriptorInit(const cusparseLtHandle_t* handle,
                                                              cusparseLtMatDescriptor_t* matDescr, int64_t rows,
                                                              int64_t cols, int64_t ld, uint32_t alignment,
                                                              cudaDataType valueType, cusparseOrder_t order) {
  Call c("cusparseLtDenseDescriptorInit");
  c.args() << "handle=" << handle_arg(handle) << ", rows=" << rows << ", cols=" << cols << ", ld=" << ld
           << ", alignment=" << alignment << ", type=" << type_name(valueType) << ", order=" << order_name(order);
  SP24DBL_INJECT(c);
  return mat_init(c, handle, matDescr, rows, cols, ld, alignment, valueType, order, false, 0);
}

cusparseStatus_t CUSPARSELT_API cusparseLtStructuredDescriptorInit(const cusparseLtHandle_t* handle,
                                                                   cusparseLtMatDescriptor_t* matDescr, int64_t rows,
                                                                   int64_t cols, int64_t ld, uint32_t alignment,
                                                                   cudaDataType valueType, cusparseOrder_t order,
                                                                   cusparseLtSparsity_t sparsity) {
  Call c("cusparseLtStructuredDescriptorInit");
  c.args() << "handle=" << handle_arg(handle) << ", rows=" << rows << ", cols=" << cols << ", ld=" << ld
           << ", alignment=" << alignment << ", type=" << type_name(valueType) << ", order=" << order_name(order)
           << ", sparsity=" << static_cast<int>(sparsity);
  SP24DBL_INJECT(c);
  return mat_init(c, handle, matDescr, rows, cols, ld, alignment, valueType, order, true, sparsity);
}

cusparseStatus_t CUSPARSELT_API cusparseLtMatDescriptorDestroy(const cusparseLtMatDescriptor_t* matDescr) {
  Call c("cusparseLtMatDescriptorDestroy");
  c.args() << "matDescr=" << mat_arg(matDescr);
  SP24DBL_INJECT(c);
  uint64_t id = 0;
  MatS* m = nullptr;
  if (matDescr == nullptr) return c.fail(kInvalid, "matDescr is NULL", cite(doc::kMatDestroy, true));
  SP24DBL_TRY(need_mat(c, matDescr, "matDescr", 0, &id, &m));
  m->alive = false;
  return c.ok();
}

cusparseStatus_t CUSPARSELT_API cusparseLtMatmulDescriptorInit(const cusparseLtHandle_t* handle,
                                                               cusparseLtMatmulDescriptor_t* matmulDescr,
                                                               cusparseOperation_t opA, cusparseOperation_t opB,
                                                               const cusparseLtMatDescriptor_t* matA,
                                                               const cusparseLtMatDescriptor_t* matB,
                                                               const cusparseLtMatDescriptor_t* matC,
                                                               const cusparseLtMatDescriptor_t* matD,
                                                               cusparseComputeType computeType) {
  Call c("cusparseLtMatmulDescriptorInit");
  c.args() << "handle=" << handle_arg(handle) << ", opA=" << op_name(opA) << ", opB=" << op_name(opB)
           << ", matA=" << mat_arg(matA) << ", matB=" << mat_arg(matB) << ", matC=" << mat_arg(matC)
           << ", matD=" << mat_arg(matD) << ", compute=" << compute_name(computeType);
  SP24DBL_INJECT(c);
  const char* const where = doc::kMatmulInit;
  uint64_t hid = 0;
  HandleS* hs = nullptr;
  SP24DBL_TRY(need_handle(c, handle, &hid, &hs));
  if (matmulDescr == nullptr) return c.fail(kInvalid, "matmulDescr is NULL", cite(where, true));
  const cusparseLtMatDescriptor_t* const in[4] = {matA, matB, matC, matD};
  static const char* const names[4] = {"matA", "matB", "matC", "matD"};
  MatmulS mm;
  for (int i = 0; i < 4; ++i) {
    MatS* m = nullptr;
    SP24DBL_TRY(need_mat(c, in[i], names[i], hid, &mm.ids[i], &m));
    mm.m[i] = *m;
  }
  // docs table: opA / opB "CUSPARSE_OPERATION_NON_TRANSPOSE, CUSPARSE_OPERATION_TRANSPOSE"
  for (int i = 0; i < 2; ++i) {
    const int op = i == 0 ? opA : opB;
    if (op != CUSPARSE_OPERATION_NON_TRANSPOSE && op != CUSPARSE_OPERATION_TRANSPOSE) {
      return c.fail(kInvalid, std::string(i == 0 ? "opA" : "opB") + " = " + op_name(op) +
                                  " is not CUSPARSE_OPERATION_NON_TRANSPOSE or CUSPARSE_OPERATION_TRANSPOSE",
                    cite(where));
    }
  }
  // docs table: computeType
  if (computeType != CUSPARSE_COMPUTE_32I && computeType != CUSPARSE_COMPUTE_16F && computeType != CUSPARSE_COMPUTE_32F) {
    return c.fail(kInvalid, "computeType = " + compute_name(computeType) + " is not a cusparseComputeType value", cite(where));
  }
  // docs: "The structured matrix descriptor can used for matA or matB but not both"; matC/matD dense
  if (mm.m[0].structured == mm.m[1].structured) {
    return c.fail(kInvalid,
                  std::string(mm.m[0].structured ? "both matA and matB are" : "neither matA nor matB is") +
                      " a structured descriptor (exactly one of them must be)",
                  cite(where));
  }
  for (int i = 2; i < 4; ++i) {
    if (mm.m[i].structured) {
      return c.fail(kInvalid, std::string(names[i]) + " is a structured descriptor; it must be dense", cite(where));
    }
  }
  mm.handle = hid;
  mm.opA = opA;
  mm.opB = opB;
  mm.compute = computeType;
  mm.sparseA = mm.m[0].structured;
  const MatS &A = mm.m[0], &B = mm.m[1], &C = mm.m[2], &D = mm.m[3];
  const int64_t M = opA == CUSPARSE_OPERATION_NON_TRANSPOSE ? A.rows : A.cols;
  const int64_t K = opA == CUSPARSE_OPERATION_NON_TRANSPOSE ? A.cols : A.rows;
  const int64_t K2 = opB == CUSPARSE_OPERATION_NON_TRANSPOSE ? B.rows : B.cols;
  const int64_t N = opB == CUSPARSE_OPERATION_NON_TRANSPOSE ? B.cols : B.rows;
  // docs (cusparseLtMatmul): D = op(A) op(B) ...; "D has the same shape of C"
  if (K != K2 || C.rows != M || C.cols != N || D.rows != M || D.cols != N) {
    std::ostringstream os;
    os << "shapes do not match: op(A) is " << M << " x " << K << ", op(B) " << K2 << " x " << N << ", C " << C.rows
       << " x " << C.cols << ", D " << D.rows << " x " << D.cols << " (need op(A) M x K, op(B) K x N, C and D M x N)";
    return c.fail(kInvalid, os.str(), cite(doc::kMatmul));
  }
  mm.M = M;
  mm.N = N;
  mm.K = K;
  // choice (4): C and D share the layout
  if (C.order != D.order || C.ld != D.ld) {
    return c.fail(kNotSupported,
                  "matC (" + order_name(C.order) + ", ld " + std::to_string(C.ld) + ") and matD (" + order_name(D.order) +
                      ", ld " + std::to_string(D.ld) + ") differ in layout",
                  cite(doc::kMatmul, true) + "; NOT_SUPPORTED as measured");
  }
  // docs Key Features table: one type for A and B; (A/B, C, D, compute) rows
  if (A.type != B.type) {
    return c.fail(kNotSupported,
                  "matA is " + type_name(A.type) + " and matB " + type_name(B.type) + "; A and B must have the same type",
                  cite(doc::kTypes));
  }
  if (!in_type_table(A.type, C.type, D.type, computeType)) {
    return c.fail(kNotSupported,
                  "(A/B, C, D, compute) = (" + type_name(A.type) + ", " + type_name(C.type) + ", " + type_name(D.type) +
                      ", " + compute_name(computeType) + ") is not a supported combination",
                  cite(doc::kTypes));
  }
  // docs: FP8 rows list SM 9.0 and newer; v0.8.0 added SM 8.9 (choice (5))
  if (is_fp8(A.type) && !(hs->sm == 89 || hs->sm >= 90)) {
    return c.fail(kNotSupported, type_name(A.type) + " needs sm_89 or sm_90 and newer; this GPU is sm_" + std::to_string(hs->sm),
                  cite(doc::kTypes) + "; " + doc::kRelease);
  }
  // docs Constrains (CUDA_R_8I; FP8 too: choice (3)): both operands K-major
  if (is_8bit(A.type) && !(a_k_major(opA, A.order) && b_k_major(opB, B.order))) {
    return c.fail(kNotSupported,
                  "8-bit " + type_name(A.type) + " needs K-major operands: (opA/opB, orderA/orderB) = TN Col/Col, NT "
                  "Row/Row, NN Row/Col or TT Col/Row; got " + op_name(opA) + op_name(opB) + " " + order_name(A.order) + "/" +
                      order_name(B.order),
                  cite(doc::kLayout8) + "; applied to FP8 and to a structured B as for A (double's choice)");
  }
  State& s = S();
  const uint64_t id = s.next_id++;
  s.matmuls[id] = mm;
  write_tag(matmulDescr, kMagicMatmul, id);
  std::ostringstream note;
  note << "[" << id_name('m', id) << ": M=" << M << ", N=" << N << ", K=" << K << ", structured "
       << (mm.sparseA ? "A" : "B") << "]";
  return c.ok(note.str());
}

cusparseStatus_t CUSPARSELT_API cusparseLtMatmulDescSetAttribute(const cusparseLtHandle_t* handle,
                                                                 cusparseLtMatmulDescriptor_t* matmulDescr,
                                                                 cusparseLtMatmulDescAttribute_t matmulAttribute,
                                                                 const void* data, size_t dataSize) {
  Call c("cusparseLtMatmulDescSetAttribute");
  c.args() << "handle=" << handle_arg(handle) << ", matmulDescr=" << matmul_arg(matmulDescr)
           << ", attribute=" << matmul_attr_name(matmulAttribute) << ", dataSize=" << dataSize;
  SP24DBL_INJECT(c);
  MatmulS* mm = nullptr;
  size_t want = 0;
  SP24DBL_TRY(matmul_attr_args(c, handle, matmulDescr, matmulAttribute, data, dataSize, &mm, &want));
  Epilogue& e = mm->epi;
  int iv = 0;
  float fv = 0.f;
  int64_t lv = 0;
  void* pv = nullptr;
  if (want == sizeof(int) && matmulAttribute != CUSPARSELT_MATMUL_ACTIVATION_RELU_UPPERBOUND &&
      matmulAttribute != CUSPARSELT_MATMUL_ACTIVATION_RELU_THRESHOLD &&
      matmulAttribute != CUSPARSELT_MATMUL_ACTIVATION_GELU_SCALING)
    std::memcpy(&iv, data, sizeof iv);
  const std::string not_modelled = std::string(matmul_attr_name(matmulAttribute)) + " is not modelled by the double";
  switch (matmulAttribute) {
    case CUSPARSELT_MATMUL_ACTIVATION_RELU:
    case CUSPARSELT_MATMUL_ACTIVATION_GELU:
      // choice (6): activations are not modelled; disabling (0, the default) is accepted
      if (iv != 0) return c.fail(kInvalid, not_modelled + " (only 0 = disabled is accepted)", cite(doc::kMatmulAttr, true));
      (matmulAttribute == CUSPARSELT_MATMUL_ACTIVATION_RELU ? e.relu : e.gelu) = 0;
      break;
    case CUSPARSELT_MATMUL_ACTIVATION_RELU_UPPERBOUND:
      std::memcpy(&fv, data, sizeof fv);
      e.relu_upper = fv;
      break;
    case CUSPARSELT_MATMUL_ACTIVATION_RELU_THRESHOLD:
      std::memcpy(&fv, data, sizeof fv);
      e.relu_threshold = fv;
      break;
    case CUSPARSELT_MATMUL_ACTIVATION_GELU_SCALING:
      // docs: "It implies CUSPARSELT_MATMUL_ACTIVATION_GELU" (choice (6): not modelled)
      return c.fail(kInvalid, not_modelled + " (it implies ACTIVATION_GELU)", cite(doc::kMatmulAttr, true));
    case CUSPARSELT_MATMUL_ALPHA_VECTOR_SCALING: e.alpha_vec = iv != 0; break;
    case CUSPARSELT_MATMUL_BETA_VECTOR_SCALING: e.beta_vec = iv != 0; break;
    case CUSPARSELT_MATMUL_BIAS_STRIDE:
      std::memcpy(&lv, data, sizeof lv);
      // docs: "Bias stride between consecutive bias vectors. 0 means broadcast the first bias vector"
      if (lv < 0) return c.fail(kInvalid, "BIAS_STRIDE = " + std::to_string(lv) + " is negative", cite(doc::kMatmulAttr, true));
      e.bias_stride = lv;
      break;
    case CUSPARSELT_MATMUL_BIAS_POINTER:
      std::memcpy(&pv, data, sizeof pv);
      e.bias = pv;
      break;
    case CUSPARSELT_MATMUL_SPARSE_MAT_POINTER:
      std::memcpy(&pv, data, sizeof pv);
      e.sparse_mat = pv;
      break;
    case CUSPARSELT_MATMUL_A_SCALE_MODE:
    case CUSPARSELT_MATMUL_B_SCALE_MODE:
    case CUSPARSELT_MATMUL_C_SCALE_MODE:
    case CUSPARSELT_MATMUL_D_SCALE_MODE:
    case CUSPARSELT_MATMUL_D_OUT_SCALE_MODE: {
      if (iv < CUSPARSELT_MATMUL_SCALE_NONE || iv > CUSPARSELT_MATMUL_MATRIX_SCALE_VEC64_UE8M0) {
        return c.fail(kInvalid, std::string(matmul_attr_name(matmulAttribute)) + " = " + std::to_string(iv) +
                                    " is not a cusparseLtMatmulMatrixScale_t value",
                      cite(doc::kMatmulAttr));
      }
      if (iv != CUSPARSELT_MATMUL_SCALE_NONE) {
        return c.fail(kInvalid, not_modelled + " (only CUSPARSELT_MATMUL_SCALE_NONE is accepted)",
                      cite(doc::kMatmulAttr, true));
      }
      e.scale_mode[matmulAttribute - CUSPARSELT_MATMUL_A_SCALE_MODE] = iv;
      break;
    }
    default: {  // the scale pointers
      std::memcpy(&pv, data, sizeof pv);
      if (pv != nullptr) return c.fail(kInvalid, not_modelled + " (only NULL is accepted)", cite(doc::kMatmulAttr, true));
      e.scale_ptr[matmulAttribute - CUSPARSELT_MATMUL_A_SCALE_POINTER] = nullptr;
      break;
    }
  }
  return c.ok();
}

cusparseStatus_t CUSPARSELT_API cusparseLtMatmulDescGetAttribute(const cusparseLtHandle_t* handle,
                                                                 const cusparseLtMatmulDescriptor_t* matmulDescr,
                                                                 cusparseLtMatmulDescAttribute_t matmulAttribute,
                                                                 void* data, size_t dataSize) {
  Call c("cusparseLtMatmulDescGetAttribute");
  c.args() << "handle=" << handle_arg(handle) << ", matmulDescr=" << matmul_arg(matmulDescr)
           << ", attribute=" << matmul_attr_name(matmulAttribute) << ", dataSize=" << dataSize;
  SP24DBL_INJECT(c);
  MatmulS* mm = nullptr;
  size_t want = 0;
  SP24DBL_TRY(matmul_attr_args(c, handle, matmulDescr, matmulAttribute, data, dataSize, &mm, &want));
  const Epilogue& e = mm->epi;
  switch (matmulAttribute) {
    case CUSPARSELT_MATMUL_ACTIVATION_RELU: std::memcpy(data, &e.relu, sizeof(int)); break;
    case CUSPARSELT_MATMUL_ACTIVATION_GELU: std::memcpy(data, &e.gelu, sizeof(int)); break;
    case CUSPARSELT_MATMUL_ACTIVATION_RELU_UPPERBOUND: std::memcpy(data, &e.relu_upper, sizeof(float)); break;
    case CUSPARSELT_MATMUL_ACTIVATION_RELU_THRESHOLD: std::memcpy(data, &e.relu_threshold, sizeof(float)); break;
    case CUSPARSELT_MATMUL_ACTIVATION_GELU_SCALING: std::memcpy(data, &e.gelu_scaling, sizeof(float)); break;
    case CUSPARSELT_MATMUL_ALPHA_VECTOR_SCALING: std::memcpy(data, &e.alpha_vec, sizeof(int)); break;
    case CUSPARSELT_MATMUL_BETA_VECTOR_SCALING: std::memcpy(data, &e.beta_vec, sizeof(int)); break;
    case CUSPARSELT_MATMUL_BIAS_STRIDE: std::memcpy(data, &e.bias_stride, sizeof(int64_t)); break;
    case CUSPARSELT_MATMUL_BIAS_POINTER: std::memcpy(data, &e.bias, sizeof(void*)); break;
    case CUSPARSELT_MATMUL_SPARSE_MAT_POINTER: std::memcpy(data, &e.sparse_mat, sizeof(void*)); break;
    case CUSPARSELT_MATMUL_A_SCALE_MODE:
    case CUSPARSELT_MATMUL_B_SCALE_MODE:
    case CUSPARSELT_MATMUL_C_SCALE_MODE:
    case CUSPARSELT_MATMUL_D_SCALE_MODE:
    case CUSPARSELT_MATMUL_D_OUT_SCALE_MODE:
      std::memcpy(data, &e.scale_mode[matmulAttribute - CUSPARSELT_MATMUL_A_SCALE_MODE], sizeof(int));
      break;
    default: std::memcpy(data, &e.scale_ptr[matmulAttribute - CUSPARSELT_MATMUL_A_SCALE_POINTER], sizeof(void*)); break;
  }
  return c.ok();
}

cusparseStatus_t CUSPARSELT_API cusparseLtMatmulAlgSelectionInit(const cusparseLtHandle_t* handle,
                                                                 cusparseLtMatmulAlgSelection_t* algSelection,
                                                                 const cusparseLtMatmulDescriptor_t* matmulDescr,
                                                                 cusparseLtMatmulAlg_t alg) {
  Call c("cusparseLtMatmulAlgSelectionInit");
  c.args() << "handle=" << handle_arg(handle) << ", matmulDescr=" << matmul_arg(matmulDescr)
           << ", alg=" << static_cast<int>(alg);
  SP24DBL_INJECT(c);
  uint64_t hid = 0, mid = 0;
  HandleS* hs = nullptr;
  MatmulS* mm = nullptr;
  SP24DBL_TRY(need_handle(c, handle, &hid, &hs));
  if (algSelection == nullptr) return c.fail(kInvalid, "algSelection is NULL", cite(doc::kAlgInit, true));
  SP24DBL_TRY(need_matmul(c, matmulDescr, hid, &mid, &mm));
  // docs table: alg "CUSPARSELT_MATMUL_ALG_DEFAULT"
  if (alg != CUSPARSELT_MATMUL_ALG_DEFAULT) {
    return c.fail(kInvalid, "alg = " + std::to_string(static_cast<int>(alg)) + " is not CUSPARSELT_MATMUL_ALG_DEFAULT",
                  cite(doc::kAlgInit));
  }
  SP24DBL_TRY(mats_alive(c, *mm, "matmul descriptor " + id_name('m', mid)));
  // docs Key Features: FP16 compute (CUSPARSE_COMPUTE_16F) only on SM 9.0 (choice (5): refused here)
  if (mm->compute == CUSPARSE_COMPUTE_16F && hs->sm != 90) {
    return c.fail(kNotSupported, "CUSPARSE_COMPUTE_16F is served on sm_90 only; this GPU is sm_" + std::to_string(hs->sm),
                  cite(doc::kTypes) + "; refused at this call as measured");
  }
  State& s = S();
  const uint64_t id = s.next_id++;
  AlgS a;
  a.handle = hid;
  a.matmul = mid;
  a.mm = *mm;
  a.p.max_id = mm->K < 256 ? 4 : 8;  // choice (7)
  s.algs[id] = a;
  write_tag(algSelection, kMagicAlg, id);
  return c.ok("[" + id_name('a', id) + ", max id " + std::to_string(a.p.max_id) + "]");
}

cusparseStatus_t CUSPARSELT_API cusparseLtMatmulAlgSelectionDestroy(const cusparseLtMatmulAlgSelection_t* algSelection) {
  Call c("cusparseLtMatmulAlgSelectionDestroy");
  c.args() << "algSelection=" << alg_arg(algSelection);
  SP24DBL_INJECT(c);
  uint64_t id = 0;
  AlgS* a = nullptr;
  SP24DBL_TRY(need_alg(c, algSelection, 0, &id, &a));
  a->alive = false;
  return c.ok();
}

cusparseStatus_t CUSPARSELT_API cusparseLtMatmulAlgSetAttribute(const cusparseLtHandle_t* handle,
                                                                cusparseLtMatmulAlgSelection_t* algSelection,
                                                                cusparseLtMatmulAlgAttribute_t attribute,
                                                                const void* data, size_t dataSize) {
  Call c("cusparseLtMatmulAlgSetAttribute");
  int v = 0;
  if (data != nullptr && dataSize == sizeof(int)) std::memcpy(&v, data, sizeof v);
  c.args() << "handle=" << handle_arg(handle) << ", algSelection=" << alg_arg(algSelection)
           << ", attribute=" << alg_attr_name(attribute) << ", value=" << v << ", dataSize=" << dataSize;
  SP24DBL_INJECT(c);
  AlgS* a = nullptr;
  SP24DBL_TRY(alg_attr_args(c, handle, algSelection, attribute, data, dataSize, &a));
  const std::string where = cite(doc::kAlgAttr);
  AlgP& p = a->p;
  switch (attribute) {
    case CUSPARSELT_MATMUL_ALG_CONFIG_ID:
      // docs: "[0, MAX] (see CUSPARSELT_MATMUL_ALG_CONFIG_MAX_ID)"; exclusive of MAX_ID (choice (7))
      if (v < 0 || v >= p.max_id) {
        return c.fail(kInvalid,
                      "ALG_CONFIG_ID = " + std::to_string(v) + " is outside [0, ALG_CONFIG_MAX_ID = " +
                          std::to_string(p.max_id) + ")",
                      where);
      }
      p.id = v;
      break;
    case CUSPARSELT_MATMUL_ALG_CONFIG_MAX_ID:
      // docs: "Algorithm ID limit (query only)"
      return c.fail(kInvalid, "ALG_CONFIG_MAX_ID is read-only", where);
    case CUSPARSELT_MATMUL_SEARCH_ITERATIONS:
      // docs: "> 0 (default=5)"
      if (v <= 0) return c.fail(kInvalid, "SEARCH_ITERATIONS = " + std::to_string(v) + " must be > 0", where);
      p.iterations = v;
      break;
    case CUSPARSELT_MATMUL_SPLIT_K:
      // docs: "[1, K], 1: Split-K disabled"
      if (v < 1 || v > a->mm.K) {
        return c.fail(kInvalid,
                      "SPLIT_K = " + std::to_string(v) + " is outside [1, K = " + std::to_string(a->mm.K) + "]", where);
      }
      p.split_k = v;
      p.split_k_set = true;
      break;
    case CUSPARSELT_MATMUL_SPLIT_K_MODE:
      // docs: CUSPARSELT_SPLIT_K_MODE_ONE_KERNEL, CUSPARSELT_SPLIT_K_MODE_TWO_KERNELS (choice (7))
      if (v != CUSPARSELT_SPLIT_K_MODE_ONE_KERNEL && v != CUSPARSELT_SPLIT_K_MODE_TWO_KERNELS) {
        return c.fail(kInvalid,
                      "SPLIT_K_MODE = " + std::to_string(v) +
                          " is not CUSPARSELT_SPLIT_K_MODE_ONE_KERNEL (1) or CUSPARSELT_SPLIT_K_MODE_TWO_KERNELS (2)",
                      where + "; " + doc::kSplitMode);
      }
      p.mode = v;
      break;
    default:  // CUSPARSELT_MATMUL_SPLIT_K_BUFFERS
      // docs: "[1, SplitK - 1]", against the split-K set now (choice (7))
      if (v < 1 || v > p.split_k - 1) {
        return c.fail(kInvalid,
                      "SPLIT_K_BUFFERS = " + std::to_string(v) + " is outside [1, SPLIT_K - 1] with SPLIT_K = " +
                          std::to_string(p.split_k) + (p.split_k <= 1 ? " (set SPLIT_K > 1 first)" : ""),
                      where);
      }
      p.buffers = v;
      p.buffers_set = true;
      break;
  }
  return c.ok();
}

cusparseStatus_t CUSPARSELT_API cusparseLtMatmulAlgGetAttribute(const cusparseLtHandle_t* handle,
                                                                const cusparseLtMatmulAlgSelection_t* algSelection,
                                                                cusparseLtMatmulAlgAttribute_t attribute, void* data,
                                                                size_t dataSize) {
  Call c("cusparseLtMatmulAlgGetAttribute");
  c.args() << "handle=" << handle_arg(handle) << ", algSelection=" << alg_arg(algSelection)
           << ", attribute=" << alg_attr_name(attribute) << ", dataSize=" << dataSize;
  SP24DBL_INJECT(c);
  AlgS* a = nullptr;
  SP24DBL_TRY(alg_attr_args(c, handle, algSelection, attribute, data, dataSize, &a));
  const AlgP& p = a->p;
  const int values[6] = {p.id, p.max_id, p.iterations, p.split_k, p.mode, p.buffers};
  std::memcpy(data, &values[attribute], sizeof(int));
  return c.ok("[" + std::to_string(values[attribute]) + "]");
}

cusparseStatus_t CUSPARSELT_API cusparseLtMatmulPlanInit(const cusparseLtHandle_t* handle, cusparseLtMatmulPlan_t* plan,
                                                         const cusparseLtMatmulDescriptor_t* matmulDescr,
                                                         const cusparseLtMatmulAlgSelection_t* algSelection) {
  Call c("cusparseLtMatmulPlanInit");
  c.args() << "handle=" << handle_arg(handle) << ", matmulDescr=" << matmul_arg(matmulDescr)
           << ", algSelection=" << alg_arg(algSelection);
  SP24DBL_INJECT(c);
  uint64_t hid = 0, mid = 0, aid = 0;
  MatmulS* mm = nullptr;
  AlgS* a = nullptr;
  SP24DBL_TRY(need_handle(c, handle, &hid));
  if (plan == nullptr) return c.fail(kInvalid, "plan is NULL", cite(doc::kPlanInit, true));
  SP24DBL_TRY(need_matmul(c, matmulDescr, hid, &mid, &mm));
  SP24DBL_TRY(need_alg(c, algSelection, hid, &aid, &a));
  // choice (9): the selection must describe this matmul descriptor
  if (a->matmul != mid) {
    return c.fail(kInvalid,
                  "algSelection " + id_name('a', aid) + " was initialised from matmul descriptor " + id_name('m', a->matmul) +
                      ", not from " + id_name('m', mid),
                  cite(doc::kPlanInit, true));
  }
  SP24DBL_TRY(mats_alive(c, *mm, "matmul descriptor " + id_name('m', mid)));
  const AlgP& p = a->p;
  // docs: SPLIT_K_BUFFERS in [1, SplitK - 1] (re-checked: split-K may have changed since; choice (7))
  if (p.buffers_set && (p.buffers < 1 || p.buffers > p.split_k - 1)) {
    return c.fail(kInvalid,
                  "SPLIT_K_BUFFERS = " + std::to_string(p.buffers) + " is outside [1, SPLIT_K - 1] with SPLIT_K = " +
                      std::to_string(p.split_k),
                  cite(doc::kAlgAttr));
  }
  State& s = S();
  const uint64_t id = s.next_id++;
  PlanS ps;
  ps.handle = hid;
  ps.matmul = mid;
  ps.alg = aid;
  ps.mm = *mm;  // the matmul descriptor's attributes as of now (choice (9))
  ps.p = p;
  s.plans[id] = ps;
  write_tag(plan, kMagicPlan, id);
  std::ostringstream note;
  note << "[" << id_name('p', id) << ": id " << p.id << ", split-K " << p.split_k << ", mode " << p.mode << ", buffers "
       << p.buffers << "]";
  return c.ok(note.str());
}

cusparseStatus_t CUSPARSELT_API cusparseLtMatmulPlanDestroy(const cusparseLtMatmulPlan_t* plan) {
  Call c("cusparseLtMatmulPlanDestroy");
  c.args() << "plan=" << plan_arg(plan);
  SP24DBL_INJECT(c);
  uint64_t id = 0;
  PlanS* p = nullptr;
  SP24DBL_TRY(need_plan(c, plan, 0, &id, &p));
  p->alive = false;
  return c.ok();
}

cusparseStatus_t CUSPARSELT_API cusparseLtMatmulGetWorkspace(const cusparseLtHandle_t* handle,
                                                             const cusparseLtMatmulPlan_t* plan, size_t* workspaceSize) {
  Call c("cusparseLtMatmulGetWorkspace");
  c.args() << "handle=" << handle_arg(handle) << ", plan=" << plan_arg(plan);
  SP24DBL_INJECT(c);
  uint64_t hid = 0, pid = 0;
  PlanS* ps = nullptr;
  SP24DBL_TRY(need_handle(c, handle, &hid));
  SP24DBL_TRY(need_plan(c, plan, hid, &pid, &ps));
  SP24DBL_TRY(mats_alive(c, ps->mm, "plan " + id_name('p', pid)));
  if (workspaceSize == nullptr) return c.fail(kInvalid, "workspaceSize is NULL", cite(doc::kWorkspace, true));
  *workspaceSize = static_cast<size_t>(workspace_bytes(ps->mm, ps->p));
  return c.ok("[" + std::to_string(*workspaceSize) + " bytes]");
}

cusparseStatus_t CUSPARSELT_API cusparseLtMatmul(const cusparseLtHandle_t* handle, const cusparseLtMatmulPlan_t* plan,
                                                 const void* alpha, const void* d_A, const void* d_B, const void* beta,
                                                 const void* d_C, void* d_D, void* workspace, cudaStream_t* streams,
                                                 int32_t numStreams) {
  Call c("cusparseLtMatmul");
  c.args() << "handle=" << handle_arg(handle) << ", plan=" << plan_arg(plan) << ", alpha=" << ptr_arg(alpha)
           << ", d_A=" << ptr_arg(d_A) << ", d_B=" << ptr_arg(d_B) << ", beta=" << ptr_arg(beta) << ", d_C=" << ptr_arg(d_C)
           << ", d_D=" << ptr_arg(d_D) << (d_C != nullptr && d_C == d_D ? " (= d_C)" : "")
           << ", workspace=" << ptr_arg(workspace) << ", numStreams=" << numStreams;
  SP24DBL_INJECT(c);
  return exec(c, handle, plan, ExecArgs{alpha, d_A, d_B, beta, d_C, d_D, workspace}, streams, numStreams, false);
}

cusparseStatus_t CUSPARSELT_API cusparseLtMatmulSearch(const cusparseLtHandle_t* handle, cusparseLtMatmulPlan_t* plan,
                                                       const void* alpha, const void* d_A, const void* d_B,
                                                       const void* beta, const void* d_C, void* d_D, void* workspace,
                                                       cudaStream_t* streams, int32_t numStreams) {
  Call c("cusparseLtMatmulSearch");
  c.args() << "handle=" << handle_arg(handle) << ", plan=" << plan_arg(plan) << ", alpha=" << ptr_arg(alpha)
           << ", d_A=" << ptr_arg(d_A) << ", d_B=" << ptr_arg(d_B) << ", beta=" << ptr_arg(beta) << ", d_C=" << ptr_arg(d_C)
           << ", d_D=" << ptr_arg(d_D) << ", workspace=" << ptr_arg(workspace) << ", numStreams=" << numStreams;
  SP24DBL_INJECT(c);
  return exec(c, handle, plan, ExecArgs{alpha, d_A, d_B, beta, d_C, d_D, workspace}, streams, numStreams, true);
}

cusparseStatus_t CUSPARSELT_API cusparseLtSpMMAPruneCheck2(const cusparseLtHandle_t* handle,
                                                           const cusparseLtMatDescriptor_t* sparseMatDescr,
                                                           int isSparseA, cusparseOperation_t op, const void* d_in,
                                                           int* d_valid, cudaStream_t stream) {
  Call c("cusparseLtSpMMAPruneCheck2");
  c.args() << "handle=" << handle_arg(handle) << ", sparseMatDescr=" << mat_arg(sparseMatDescr)
           << ", isSparseA=" << isSparseA << ", op=" << op_name(op);
  (void)stream;
  SP24DBL_INJECT(c);
  uint64_t hid = 0, did = 0;
  MatS* m = nullptr;
  SP24DBL_TRY(need_handle(c, handle, &hid));
  SP24DBL_TRY(need_mat(c, sparseMatDescr, "sparseMatDescr", hid, &did, &m));
  if (!m->structured) {
    return c.fail(kInvalid, "sparseMatDescr (" + id_name('d', did) + ") is a dense descriptor; a structured one is needed",
                  cite(doc::kPruneCheck));
  }
  if (op != CUSPARSE_OPERATION_NON_TRANSPOSE && op != CUSPARSE_OPERATION_TRANSPOSE) {
    return c.fail(kInvalid, "op = " + op_name(op) + " is not CUSPARSE_OPERATION_NON_TRANSPOSE or CUSPARSE_OPERATION_TRANSPOSE",
                  cite(doc::kPruneCheck));
  }
  if (d_in == nullptr) return c.fail(kInvalid, "d_in is NULL", cite(doc::kPruneCheck, true));
  if (d_valid == nullptr) return c.fail(kInvalid, "d_valid is NULL", cite(doc::kPruneCheck, true));
  if (!aligned(d_in, m->alignment)) {
    return c.fail(kInvalid, "d_in = " + hex(d_in) + " is not 16-byte aligned (and to the descriptor's alignment)",
                  cite(doc::kPruneCheck, true));
  }
  int64_t bp = 0, bg = 0;
  int n = 0;
  const int bad = find_unstructured(*m, geom(*m, isSparseA != 0, op), d_in, &bp, &bg, &n) ? 1 : 0;
  *d_valid = bad;  // docs: "Validation results (0 correct, 1 wrong)"
  return c.ok(std::string("[") + (bad ? "not 2:4" : "2:4") + "]");
}

cusparseStatus_t CUSPARSELT_API cusparseLtSpMMACompressedSize2(const cusparseLtHandle_t* handle,
                                                               const cusparseLtMatDescriptor_t* sparseMatDescr,
                                                               size_t* compressedSize, size_t* compressedBufferSize) {
  Call c("cusparseLtSpMMACompressedSize2");
  c.args() << "handle=" << handle_arg(handle) << ", sparseMatDescr=" << mat_arg(sparseMatDescr);
  SP24DBL_INJECT(c);
  uint64_t hid = 0, did = 0;
  MatS* m = nullptr;
  SP24DBL_TRY(need_handle(c, handle, &hid));
  SP24DBL_TRY(need_mat(c, sparseMatDescr, "sparseMatDescr", hid, &did, &m));
  // docs table: "Structured (sparse) matrix descriptor"
  if (!m->structured) {
    return c.fail(kInvalid, "sparseMatDescr (" + id_name('d', did) + ") is a dense descriptor; a structured one is needed",
                  cite(doc::kSize2));
  }
  if (compressedSize == nullptr || compressedBufferSize == nullptr) {
    return c.fail(kInvalid, std::string(compressedSize == nullptr ? "compressedSize" : "compressedBufferSize") + " is NULL",
                  cite(doc::kSize2, true));
  }
  *compressedSize = static_cast<size_t>(compressed_bytes(*m));
  *compressedBufferSize = static_cast<size_t>(compress_buffer_bytes(*m));
  return c.ok("[" + std::to_string(*compressedSize) + ", " + std::to_string(*compressedBufferSize) + " bytes]");
}

cusparseStatus_t CUSPARSELT_API cusparseLtSpMMACompress2(const cusparseLtHandle_t* handle,
                                                         const cusparseLtMatDescriptor_t* sparseMatDescr, int isSparseA,
                                                         cusparseOperation_t op, const void* d_dense,
                                                         void* d_compressed, void* d_compressed_buffer,
                                                         cudaStream_t stream) {
  Call c("cusparseLtSpMMACompress2");
  c.args() << "handle=" << handle_arg(handle) << ", sparseMatDescr=" << mat_arg(sparseMatDescr)
           << ", isSparseA=" << isSparseA << ", op=" << op_name(op) << ", d_dense=" << ptr_arg(d_dense)
           << ", d_compressed=" << ptr_arg(d_compressed) << ", d_compressed_buffer=" << ptr_arg(d_compressed_buffer);
  (void)stream;
  SP24DBL_INJECT(c);
  uint64_t hid = 0, did = 0;
  MatS* m = nullptr;
  SP24DBL_TRY(need_handle(c, handle, &hid));
  SP24DBL_TRY(need_mat(c, sparseMatDescr, "sparseMatDescr", hid, &did, &m));
  if (!m->structured) {
    return c.fail(kInvalid, "sparseMatDescr (" + id_name('d', did) + ") is a dense descriptor; a structured one is needed",
                  cite(doc::kCompress2));
  }
  // docs table: op "CUSPARSE_OPERATION_NON_TRANSPOSE, CUSPARSE_OPERATION_TRANSPOSE"; isSparseA: 0 false, else true
  if (op != CUSPARSE_OPERATION_NON_TRANSPOSE && op != CUSPARSE_OPERATION_TRANSPOSE) {
    return c.fail(kInvalid, "op = " + op_name(op) + " is not CUSPARSE_OPERATION_NON_TRANSPOSE or CUSPARSE_OPERATION_TRANSPOSE",
                  cite(doc::kCompress2));
  }
  return compress_impl(c, *m, did, geom(*m, isSparseA != 0, op), d_dense, d_compressed, d_compressed_buffer);
}

cusparseStatus_t CUSPARSELT_API cusparseLtSpMMACompressedSize(const cusparseLtHandle_t* handle,
                                                              const cusparseLtMatmulPlan_t* plan,
                                                              size_t* compressedSize, size_t* compressedBufferSize) {
  Call c("cusparseLtSpMMACompressedSize");
  c.args() << "handle=" << handle_arg(handle) << ", plan=" << plan_arg(plan);
  SP24DBL_INJECT(c);
  const MatS* m = nullptr;
  Geom g;
  uint64_t did = 0;
  SP24DBL_TRY(plan_compress_target(c, handle, plan, &m, &g, &did));
  if (compressedSize == nullptr || compressedBufferSize == nullptr) {
    return c.fail(kInvalid, std::string(compressedSize == nullptr ? "compressedSize" : "compressedBufferSize") + " is NULL",
                  cite(doc::kSize2, true));
  }
  *compressedSize = static_cast<size_t>(compressed_bytes(*m));
  *compressedBufferSize = static_cast<size_t>(compress_buffer_bytes(*m));
  return c.ok("[" + std::to_string(*compressedSize) + ", " + std::to_string(*compressedBufferSize) + " bytes]");
}

cusparseStatus_t CUSPARSELT_API cusparseLtSpMMACompress(const cusparseLtHandle_t* handle,
                                                        const cusparseLtMatmulPlan_t* plan, const void* d_dense,
                                                        void* d_compressed, void* d_compressed_buffer,
                                                        cudaStream_t stream) {
  Call c("cusparseLtSpMMACompress");
  c.args() << "handle=" << handle_arg(handle) << ", plan=" << plan_arg(plan) << ", d_dense=" << ptr_arg(d_dense)
           << ", d_compressed=" << ptr_arg(d_compressed) << ", d_compressed_buffer=" << ptr_arg(d_compressed_buffer);
  (void)stream;
  SP24DBL_INJECT(c);
  const MatS* m = nullptr;
  Geom g;
  uint64_t did = 0;
  SP24DBL_TRY(plan_compress_target(c, handle, plan, &m, &g, &did));
  return compress_impl(c, *m, did, g, d_dense, d_compressed, d_compressed_buffer);
}

// ============================================================================================================
// Test controls (control.h)
// ============================================================================================================
void sp24dbl_reset(void) {
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  s.handles.clear();
  s.mats.clear();
  s.matmuls.clear();
  s.algs.clear();
  s.plans.clear();
  s.violations = 0;
  s.last_violation.clear();
  s.log.clear();
  s.armed.clear();
  s.sm = 90;
}

void sp24dbl_set_arch(int sm) {
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  s.sm = sm;
}

int sp24dbl_live_objects(void) {
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  int n = 0;
  for (const auto& kv : s.handles) n += kv.second.alive;
  for (const auto& kv : s.mats) n += kv.second.alive;
  for (const auto& kv : s.algs) n += kv.second.alive;
  for (const auto& kv : s.plans) n += kv.second.alive;
  return n;
}

const char* sp24dbl_last_violation(void) {
  thread_local std::string copy;
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  copy = s.last_violation;
  return copy.c_str();
}

int sp24dbl_violations(void) {
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.violations;
}

const char* sp24dbl_call_log(void) {
  thread_local std::string copy;
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  copy = s.log;
  return copy.c_str();
}

void sp24dbl_fail_next(const char* function, int status) {
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (function == nullptr || function[0] == '\0') {
    s.armed.clear();
    return;
  }
  if (status == 0) {
    s.armed.erase(function);
    return;
  }
  // a cusparseStatus_t value; anything else becomes INTERNAL_ERROR (keeps the enum in range)
  const bool known = status > 0 && status <= static_cast<int>(CUSPARSE_STATUS_INSUFFICIENT_RESOURCES);
  s.armed[function] = known ? status : static_cast<int>(CUSPARSE_STATUS_INTERNAL_ERROR);
}

}  // extern "C"
