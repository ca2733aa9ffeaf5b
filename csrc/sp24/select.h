// The 2:4 selection rule, stated once for every backend (host and device, no torch).
//
// Within a group of 4 consecutive values (a0 a1 a2 a3), keep the two that rank highest:
//   * algo kLargest ranks by value, kLargestAbs by magnitude;
//   * NaN ranks above every number (a NaN is kept, never silently dropped), NaNs tie with NaNs;
//   * -0.0 == 0.0 (IEEE comparison);
//   * ties: the lower index wins.
// With ties broken by index the order is strict, so exactly two positions are kept.
#pragma once
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SP24_HD __host__ __device__ __forceinline__
#else
#define SP24_HD inline
#endif

namespace sp24 {

enum Algo : int { kLargest = 0, kLargestAbs = 1 };

SP24_HD bool is_nan(float v) { return v != v; }

// Squared-ReLU in fp32; NaN propagates. relu(-0.0)^2 == +0.0, so the result is never -0.0.
SP24_HD float relu2(float v) {
  const float r = is_nan(v) ? v : (v > 0.f ? v : 0.f);
  return r * r;
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
