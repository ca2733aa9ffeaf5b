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

SP24_HD float fp8_float_of(uint32_t b) {
  float f;
  __builtin_memcpy(&f, &b, sizeof(f));
  return f;
}

// Branch-free (selects, no divergent paths on the GPU); the same bits as the case-by-case rule above
// for every one of the 2^32 float inputs (checked exhaustively against the previous, branching form).
SP24_HD uint8_t e4m3_from_float(float x) {
  const uint32_t bits = fp8_float_bits(x);
  const uint32_t ax = bits & 0x7FFFFFFFu;
  // |x| >= 2^-6 (normal): rebias the exponent (127 -> 7: minus 120 << 23), keep 3 mantissa bits,
  // round to nearest even by adding half a step minus one plus the kept last bit (a carry may
  // raise the exponent, which is the right result)
  const uint32_t normal = (ax - 0x3C000000u + 0x7FFFFu + ((ax >> 20) & 1u)) >> 20;
  // |x| < 2^-6 (subnormal or zero): |x| + 2^14 rounds |x| to the nearest even multiple of 2^-9 (the
  // ulp of 2^14), so the difference of the bits is round(|x| * 2^9), 0..8 (8: the smallest normal)
  const uint32_t sub = fp8_float_bits(fp8_float_of(ax) + 16384.0f) - 0x46800000u;
  uint32_t r = ax >= 0x3C800000u ? normal : sub;
  r = ax > 0x43E80000u ? 0x7Eu : r;        // |x| > 464 = 448 + half a step, Inf included: saturate
  r = ax > 0x7F800000u ? uint32_t{kE4M3Nan} : r;  // NaN
  return static_cast<uint8_t>(r | ((bits >> 24) & 0x80u));
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
