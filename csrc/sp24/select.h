// The 2:4 selection rule, stated once for every backend (host and device, no torch).
//
// Within a group of 4 consecutive values (a0 a1 a2 a3), keep the two that rank highest:
//   * algo kLargest ranks by value, kLargestAbs by magnitude;
//   * NaN ranks above every number (a NaN is kept, never silently dropped), NaNs tie with NaNs;
//   * -0.0 == 0.0 (IEEE comparison);
//   * ties: the lower index wins.
// With ties broken by index the order is strict, so exactly two positions are kept.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SP24_HD __host__ __device__ __forceinline__
#else
#define SP24_HD inline
#endif

namespace sp24 {

enum Algo : int { kLargest = 0, kLargestAbs = 1 };

SP24_HD bool is_nan(float v) { return v != v; }

// The one NaN of each dtype that sp24's own arithmetic writes (relu2 and its backward); a NaN that
// is only selected or moved keeps its bits. These are the quiet NaNs NVIDIA GPUs produce, so the CUDA
// kernels write them without extra work and every backend agrees bit for bit:
//   * fp32: 0x7FFFFFFF, CUDA 13.0 math_constants.h CUDART_NAN_F (fp32 arithmetic on the GPU returns
//     this canonical NaN, whatever the operands' payloads);
//   * fp16 and bf16: 0x7FFF, CUDA 13.0 cuda_fp16.hpp CUDART_NAN_FP16 and cuda_bf16.hpp CUDART_NAN_BF16
//     ("canonical NaN"); the headers' own float -> half/bfloat16 conversion paths map every NaN to
//     0x7FFF (cuda_fp16.hpp __internal_float2half, cuda_bf16.hpp __internal_float2bfloat16).
// A CPU compiler keeps the operand's payload instead (x86: NaN * NaN = the first NaN, quieted) and
// c10's float -> Half/BFloat16 casts write 0x7E00/0x7FC0, so every backend (and sp24.reference)
// writes these bits explicitly rather than relying on the hardware or the compiler.
constexpr uint32_t kNanBitsF32 = 0x7FFFFFFFu;
constexpr uint16_t kNanBits16 = 0x7FFFu;  // fp16 and bf16

SP24_HD float canonical_nan() {
  float f;
  const uint32_t u = kNanBitsF32;
  __builtin_memcpy(&f, &u, sizeof(f));
  return f;
}

// Squared-ReLU in fp32; a NaN input gives the canonical NaN. relu(-0.0)^2 == +0.0, so the result is
// never -0.0.
SP24_HD float relu2(float v) {
  if (is_nan(v)) return canonical_nan();
  const float r = v > 0.f ? v : 0.f;
  return r * r;
}

// The Squared-ReLU backward on a kept position: dY1 = dY2 * (2 * sqrt(Y2)) in fp32 (relu(Y1) =
// sqrt(Y2)); any NaN (a NaN operand, Y2 < 0, 0 * Inf) is the canonical NaN.
SP24_HD float relu2_backward(float dy2, float y2) {
  const float r = dy2 * (2.f * sqrtf(y2));
  return is_nan(r) ? canonical_nan() : r;
}

// Does the value at position j rank strictly above the value at position i (j != i)?
SP24_HD bool ranks_above(float kj, float ki, int j, int i) {
  const bool nj = is_nan(kj), ni = is_nan(ki);
  if (nj || ni) return nj && (!ni || j < i);
  return kj > ki || (kj == ki && j < i);
}

// Returns a 4-bit mask of the kept positions (always exactly two bits set).
SP24_HD uint32_t select_2of4(float a0, float a1, float a2, float a3, int algo) {
  float k[4] = {a0, a1, a2, a3};
  if (algo == kLargestAbs) {
#pragma unroll
    for (int i = 0; i < 4; ++i) k[i] = k[i] < 0.f ? -k[i] : k[i];  // NaN stays NaN
  }
  uint32_t mask = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    int above = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) above += (j != i && ranks_above(k[j], k[i], j, i)) ? 1 : 0;
    mask |= (above < 2 ? 1u : 0u) << i;
  }
  return mask;
}

// The two kept positions of a 4-bit mask, in increasing order.
SP24_HD void mask_to_indices(uint32_t mask, uint8_t& lo, uint8_t& hi) {
  lo = (mask & 1u) ? 0 : (mask & 2u) ? 1 : (mask & 4u) ? 2 : 3;
  hi = (mask & 8u) ? 3 : (mask & 4u) ? 2 : (mask & 2u) ? 1 : 0;
}

}  // namespace sp24
