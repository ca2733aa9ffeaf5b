// Identity of a GEMM-ready buffer (sparse24_cslt_compress / sparsify24_cslt): 8 int64 words kept
// next to the buffer (a CPU tensor, so reading it never synchronises a GPU and is allowed inside a
// CUDA graph capture) and passed to sparse24_cslt_mm, which refuses a buffer whose identity does
// not match the call. The buffer's bytes alone cannot tell a CPU packing moved to a GPU, an (m, k)
// swap (the size formula is symmetric), a float16 buffer used as bfloat16, or another cuSPARSELt
// version's layout: all have the right size.
//
//   word 0  kCsltMagic ("SP24CSLT" in ASCII)
//   word 1  kCsltIdentityFormat (bumped when the words or a layout change meaning)
//   word 2  layout kind: kLayoutCpuPacking (sp24's CPU packing) or kLayoutCusparselt
//   word 3  m          word 4  k
//   word 5  dtype: 1 float16, 2 bfloat16
//   word 6  cuSPARSELt runtime version, cslt_version_code (0 for the CPU packing)
//   word 7  GPU compute capability (major*10 + minor; 0 for the CPU packing): cuSPARSELt's
//           compressed layout is chosen per architecture
#pragma once
#include <cstdint>
#include <sstream>
#include <string>

namespace sp24 {

constexpr int64_t kCsltMagic = 0x5350323443534C54LL;  // "SP24CSLT"
// 2: word 6 is cslt_version_code (format 1 had major*1000 + minor*100 + patch, which is ambiguous)
constexpr int64_t kCsltIdentityFormat = 2;
constexpr int64_t kCsltIdentityWords = 8;
constexpr int64_t kLayoutCpuPacking = 1, kLayoutCusparselt = 2;

// A cuSPARSELt version as one integer that keeps each component: major*1000000 + minor*1000 + patch.
// (cuSPARSELt's own CUSPARSELT_VERSION, major*1000 + minor*100 + patch, gives 1000 for both 0.10.0
// and 1.0.0, and a patch >= 100 spills into the minor.) Components must be in 0..999.
constexpr int64_t cslt_version_code(int64_t major, int64_t minor, int64_t patch) {
  return major * 1000000 + minor * 1000 + patch;
}
inline std::string cslt_version_string(int64_t code) {
  std::ostringstream os;
  os << code / 1000000 << "." << (code / 1000) % 1000 << "." << code % 1000;
  return os.str();
}

struct CsltIdentity {
  int64_t kind = 0, m = 0, k = 0, dtype = 0, cslt_version = 0, arch = 0;

  void to_words(int64_t* w) const {
    w[0] = kCsltMagic;
    w[1] = kCsltIdentityFormat;
    w[2] = kind;
    w[3] = m;
    w[4] = k;
    w[5] = dtype;
    w[6] = cslt_version;
    w[7] = arch;
  }
  // false if the words are not an identity of this format (magic or format differ)
  static bool from_words(const int64_t* w, CsltIdentity* out) {
    if (w[0] != kCsltMagic || w[1] != kCsltIdentityFormat) return false;
    out->kind = w[2];
    out->m = w[3];
    out->k = w[4];
    out->dtype = w[5];
    out->cslt_version = w[6];
    out->arch = w[7];
    return true;
  }
  bool operator==(const CsltIdentity& o) const {
    return kind == o.kind && m == o.m && k == o.k && dtype == o.dtype && cslt_version == o.cslt_version &&
           arch == o.arch;
  }
  std::string describe() const {
    std::ostringstream os;
    os << "a (" << m << ", " << k << ") " << (dtype == 1 ? "float16" : dtype == 2 ? "bfloat16" : "unknown-dtype")
       << " buffer in ";
    if (kind == kLayoutCpuPacking) {
      os << "sp24's CPU packing";
    } else if (kind == kLayoutCusparselt) {
      os << "cuSPARSELt " << cslt_version_string(cslt_version) << "'s layout for sm_" << arch;
    } else {
      os << "an unknown layout (kind " << kind << ")";
    }
    return os.str();
  }
};

}  // namespace sp24
