// Candidate layout of cuSPARSELt's compressed 2:4 buffer (16-bit, sm_90, row-major A, op N), for
// writing it without cusparseLtSpMMACompress. Source: public reverse engineering (pytorch/ao,
// activation24), restated in sp24's terms in python/sp24/reference.py (cslt_layout, the CPU
// emulation, with the derivation). NOT trusted by itself: a writer of it serves a shape only after
// its bytes for that shape equalled cuSPARSELt's own (csrc/cusparselt/cslt.h, direct_writers).
//
//   buffer = [ values (M, K/2) row-major | metadata (M * K / 8 bytes) ]     M % 64 == 0, K % 32 == 0
//   metadata byte at offset
//       off = band*(8*K) + c32*256 + r16*64 + r8*8 + p*4 + h*2 + e
//   = nib(row, g) | nib(row + 8, g) << 4,  row = 64*band + 16*r16 + r8,  g = 8*c32 + 4*e + 2*p + h,
//   nib(r, g) = idx[r, 2g] | idx[r, 2g + 1] << 2   (the canonical indices, increasing in a group).
//
// Expected domain: the public evidence for this layout (torchao's sm90 kernels and their tests)
// covers M % 64 == 0 and K % 64 == 0 only. For K % 64 == 32 the formula is an extrapolation; expect
// the per-shape check to refuse such shapes (cuSPARSELt then compresses them: correct, slower).
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define SP24_HD __host__ __device__ __forceinline__
#else
#define SP24_HD inline
#endif

namespace sp24 {

// Bytes of sp24's GEMM-ready buffer of a 2:4 (M, K) operand of es-byte elements, on every device
// (int64_t or c10::SymInt): the kept values (M * K/2 elements) + 2-bit metadata per kept value,
// the metadata counted for M and K rounded up to 128 (room for tile padding). cuSPARSELt writes a
// prefix of it (the rest stays zero); the CUDA path checks that cuSPARSELt asks for no more.
template <typename I>
I cslt_bytes(const I& M, const I& K, int64_t es) {
  return M * (K / 2) * es + ((M + 127) / 128 * 128) * ((K + 127) / 128 * 128) / 8;
}

// cslt_bytes for concrete sizes, overflow-checked: false (and *out untouched) when M or K is
// negative or any intermediate does not fit in int64_t (e.g. M = 2**60 + 128, K = 16 would wrap to
// 4096 bytes in the unchecked formula). Host only.
inline bool cslt_bytes_checked(int64_t M, int64_t K, int64_t es, int64_t* out) {
  if (M < 0 || K < 0 || es <= 0) return false;
  int64_t values = 0, rows = 0, cols = 0, meta = 0, total = 0;
  if (__builtin_mul_overflow(M, K / 2, &values) || __builtin_mul_overflow(values, es, &values)) return false;
  if (__builtin_add_overflow(M, int64_t{127}, &rows) || __builtin_add_overflow(K, int64_t{127}, &cols)) return false;
  rows = rows / 128 * 128;
  cols = cols / 128 * 128;
  if (__builtin_mul_overflow(rows, cols, &meta)) return false;
  if (__builtin_add_overflow(values, meta / 8, &total)) return false;
  *out = total;
  return true;
}

// True where the candidate layout is defined.
SP24_HD bool cslt_layout_domain(int64_t M, int64_t K) { return M > 0 && K > 0 && M % 64 == 0 && K % 32 == 0; }

// Metadata byte number `off` (0 <= off < M*K/8) from the canonical indices (M, K/2) row-major.
SP24_HD uint8_t cslt_meta_byte(const uint8_t* indices, int64_t K, int64_t off) {
  const int64_t band = off / (8 * K);
  const int64_t rem = off - band * 8 * K;
  const int64_t c32 = rem / 256;
  const int q = static_cast<int>(rem % 256);
  const int r16 = q / 64, r8 = (q % 64) / 8, p = (q % 8) / 4, h = (q % 4) / 2, e = q % 2;
  const int64_t row = band * 64 + r16 * 16 + r8;
  const int64_t g = c32 * 8 + 4 * e + 2 * p + h;
  const uint8_t* lo = indices + row * (K / 2) + 2 * g;
  const uint8_t* hi = lo + 8 * (K / 2);
  // & 3: an index outside 0..3 (invalid input) stays inside its own nibble, as in to_dense's & 3
  return static_cast<uint8_t>(((lo[0] & 3) | ((lo[1] & 3) << 2)) | (((hi[0] & 3) | ((hi[1] & 3) << 2)) << 4));
}

}  // namespace sp24
