// FP8 E4M3 ("e4m3fn": finite, no Inf; torch.float8_e4m3fn) conversions, host and device, no torch.
//
//   bits   S EEEE MMM, exponent bias 7; E = 0: subnormal m * 2^-9; S 1111 111 = NaN (the only NaNs);
//          largest finite 0x7E = 448 = 1.75 * 2^8; smallest subnormal 2^-9.
//
// float -> e4m3, "satfinite" (the rounding sp24 uses everywhere): round to nearest, ties to even,
// then
//   * |x| above 448 (Inf included) saturates to +-448: e4m3fn has no Inf, and a value that rounds
//     past 448 would otherwise become NaN;
//   * NaN becomes 0x7F with x's sign bit (0x7F or 0xFF);
//   * |x| at most 2^-10 (half the smallest subnormal) becomes +-0 with x's sign.
// This is the rule of CUDA 13.0's software conversion __nv_cvt_double_to_fp8(x, __NV_SATFINITE,
// __NV_E4M3) (cuda_fp8.hpp), restated on float bits (float -> double is exact, so the result is the
// same). Every backend -- the CPU kernels, the CUDA kernels and the host emulation -- runs this one
// function rather than the hardware's cvt.rn.satfinite instruction, so that the bits agree by
// construction; torch's own float -> float8_e4m3fn cast does not saturate (values past 448 become
// NaN), which is why sp24.reference clamps before it casts.
#pragma once
#include <cstdint>

#include "sp24/select.h"  // SP24_HD

namespace sp24 {

constexpr float kE4M3Max = 448.0f;
constexpr uint8_t kE4M3Nan = 0x7F;

SP24_HD uint32_t fp8_float_bits(float x) {
  uint32_t b;
  __builtin_memcpy(&b, &x, sizeof(b));
  return b;
}

SP24_HD float fp8_pos_inf() {
  const uint32_t b = 0x7F800000u;
  float f;
  __builtin_memcpy(&f, &b, sizeof(f));
  return f;
}

SP24_HD uint8_t e4m3_from_float(float x) {
  const uint32_t bits = fp8_float_bits(x);
  const uint8_t sign = static_cast<uint8_t>((bits >> 31) << 7);
  const uint32_t ax = bits & 0x7FFFFFFFu;
  constexpr uint32_t kHalfUlp = 1u << 19;  // half an e4m3 mantissa step, at fp32's mantissa position
  uint8_t res;
  if (ax <= 0x3A800000u) {  // |x| <= 2^-10: zero (2^-10 itself is a tie, to the even 0)
    res = 0;
  } else if (ax > 0x7F800000u) {  // NaN
    res = kE4M3Nan;
  } else if (ax > 0x43E80000u) {  // |x| > 464 = 448 + half a step (Inf included): saturate
    res = 0x7E;
  } else if (ax >= 0x3C800000u) {  // |x| >= 2^-6: normal
    const uint32_t exp = ((ax >> 23) & 0xFFu) - 127u + 7u;
    const uint32_t mant = (ax >> 20) & 7u;
    res = static_cast<uint8_t>((exp << 3) | mant);
    const uint32_t round = ax & ((kHalfUlp << 1) - 1u);
    if (round > kHalfUlp || (round == kHalfUlp && (mant & 1u))) res = static_cast<uint8_t>(res + 1u);
  } else {  // subnormal: 2^-10 < |x| < 2^-6
    const int exp = static_cast<int>((ax >> 23) & 0xFFu) - 127 + 7;  // <= 0
    const uint32_t shift = static_cast<uint32_t>(1 - exp);            // 1..4
    const uint32_t mant = ((ax >> 20) & 7u) | 8u;                      // with the implicit bit
    res = static_cast<uint8_t>(mant >> shift);
    const uint32_t round = (ax | (1u << 23)) & ((kHalfUlp << (shift + 1u)) - 1u);
    if (round > (kHalfUlp << shift) || (round == (kHalfUlp << shift) && (res & 1u))) res = static_cast<uint8_t>(res + 1u);
  }
  return static_cast<uint8_t>(res | sign);
}

// e4m3 -> float: exact (every e4m3 value is a float). NaN -> sign | 0x7FF00000, the bits torch's
// float8_e4m3fn -> float cast gives (c10 keeps the mantissa and sets the exponent to all ones), so
// that a dequantised NaN is the same on every backend and in sp24.reference.
SP24_HD float e4m3_to_float(uint8_t v) {
  const uint32_t sign = static_cast<uint32_t>(v & 0x80u) << 24;
  const uint32_t e = (v >> 3) & 0xFu, m = v & 7u;
  uint32_t bits;
  if (e == 15u && m == 7u) {
    bits = sign | 0x7FF00000u;
  } else if (e == 0u) {
    // m * 2^-9: exact in fp32 (m < 8); built from bits so that no float arithmetic is involved
    if (m == 0u) {
      bits = sign;
    } else {
      uint32_t lead = 2u;  // position of m's highest set bit
      while (!(m >> lead)) --lead;
      const uint32_t frac = (m << (23u - lead)) & 0x7FFFFFu;
      bits = sign | ((127u - 9u + lead) << 23) | frac;
    }
  } else {
    bits = sign | ((e - 7u + 127u) << 23) | (m << 20);
  }
  float f;
  __builtin_memcpy(&f, &bits, sizeof(f));
  return f;
}

// One row of the row-wise quantisation (QuantizeRowsParams): amax over the row's values, with a
// non-finite value (NaN, +-Inf) recorded as amax = +Inf. The max is exact and fmaxf of two such
// keys is again one, so any order of accumulation (lanes, warps, threads) gives the same scale.
struct E4M3RowStats {
  float amax = 0.f;
  SP24_HD void add(float v) {
    const float a = fabsf(v);
    amax = a <= 3.402823466e38f ? fmaxf(amax, a) : fp8_pos_inf();  // NaN and +-Inf: +Inf
  }
  SP24_HD void merge(float other_amax) { amax = fmaxf(amax, other_amax); }
  SP24_HD bool finite() const { return amax <= 3.402823466e38f; }
};

// amax / 448 in fp32; 1 for amax == 0; at least 2^-126, the smallest normal float (a row below
// 448 * 2^-126 gets that scale: every value / scale stays within +-448, and no scale is subnormal,
// which a flush-to-zero mode would read as 0); the canonical NaN for a non-finite row.
SP24_HD float e4m3_row_scale(const E4M3RowStats& s) {
  if (!s.finite()) return canonical_nan();
  if (s.amax == 0.f) return 1.f;
  const float scale = s.amax / kE4M3Max;
  return scale < 1.17549435e-38f ? 1.17549435e-38f : scale;
}

SP24_HD uint8_t e4m3_quantize(float v, float scale, bool finite) {
  return finite ? e4m3_from_float(v / scale) : kE4M3Nan;
}

}  // namespace sp24
