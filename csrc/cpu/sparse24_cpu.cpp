// CPU kernels: correct and deterministic; they define what the CUDA kernels must match bit for bit
// (the tests compare both against sp24.reference). Fast enough for CPU training studies (sp24.study):
// a branch-free selection for NaN-free groups (the generic rule of sp24/select.h otherwise), and the
// token-direction kernels work on tiles of kTokTile tokens held column-major in a per-thread buffer,
// so every read and write streams instead of striding across rows.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#include <xmmintrin.h>
#endif

#include "sp24/fp8.h"
#include "sp24/params.h"
#include "sp24/select.h"

namespace sp24 {
namespace {

template <typename F>
void dispatch_dtype(DType d, F&& f) {
  switch (d) {
    case DType::kFloat32: f(float{}); break;
    case DType::kFloat16: f(c10::Half{}); break;
    case DType::kBFloat16: f(c10::BFloat16{}); break;
  }
}

constexpr int64_t kGrain = 64;

// Tokens per tile of the token-direction kernels (a multiple of 4): a tile of 32 tokens x F features
// is 256 KiB of fp32 at F = 2048, and each output row then receives one 64-byte line per tile.
constexpr int64_t kTokTile = 32;

// The transposed split's tile: at least kTokTile tokens, more (up to 256, a multiple of 4) while the
// F x tile buffer stays within kSplitTileBytes, so at small F each output row gets longer runs.
constexpr int64_t kSplitTileBytes = 128 * 1024;
inline int64_t split_tile_tokens(int64_t F, int64_t elem_bytes) {
  const int64_t fit = F > 0 ? kSplitTileBytes / (F * elem_bytes) : kTokTile;
  return std::max(kTokTile, std::min<int64_t>(256, fit / 4 * 4));
}

// select_2of4 (sp24/select.h), with the common NaN-free case branch-free: position i is kept iff fewer
// than two positions rank above it, where j ranks above i iff k[j] > k[i], or k[j] == k[i] and j < i.
inline uint32_t select_mask(float a0, float a1, float a2, float a3, int algo) {
  if (is_nan(a0) || is_nan(a1) || is_nan(a2) || is_nan(a3)) return select_2of4(a0, a1, a2, a3, algo);
  if (algo == kLargestAbs) {  // fabs clears the sign bit (no branch); -0.0 and 0.0 compare equal anyway
    a0 = std::fabs(a0);
    a1 = std::fabs(a1);
    a2 = std::fabs(a2);
    a3 = std::fabs(a3);
  }
  const int r0 = (a1 > a0) + (a2 > a0) + (a3 > a0);
  const int r1 = (a0 >= a1) + (a2 > a1) + (a3 > a1);
  const int r2 = (a0 >= a2) + (a1 >= a2) + (a3 > a2);
  const int r3 = (a0 >= a3) + (a1 >= a3) + (a2 >= a3);
  return (r0 < 2 ? 1u : 0u) | (r1 < 2 ? 2u : 0u) | (r2 < 2 ? 4u : 0u) | (r3 < 2 ? 8u : 0u);
}

// mask_to_indices (sp24/select.h) as tables: the kept pair is data-dependent, and the chained
// conditionals cost a mispredicted branch or two per group (measured: the selection ran at ~4x the
// time of torch.relu(x).square() on the same tensor before these tables).
constexpr uint8_t kLoOf[16] = {3, 0, 1, 0, 2, 0, 1, 0, 3, 0, 1, 0, 2, 0, 1, 0};
constexpr uint8_t kHiOf[16] = {0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3};

// fp32 -> T, rounded to nearest even once; a NaN becomes the canonical NaN of T (sp24/select.h):
// c10's casts would write 0x7E00 (fp16) / 0x7FC0 (bf16), the GPU writes 0x7FFF.
template <typename T>
inline T round_to(float v) {
  if constexpr (std::is_same_v<T, float>) {
    return is_nan(v) ? canonical_nan() : v;
  } else {
    return is_nan(v) ? T(kNanBits16, T::from_bits()) : static_cast<T>(v);
  }
}

// Select the kept pair of one group of 4 (as stored in T) and write its values and indices.
template <typename T>
inline void select_and_store(const T (&a)[4], int algo, T* v, uint8_t* idx) {
  const uint32_t m = select_mask(static_cast<float>(a[0]), static_cast<float>(a[1]), static_cast<float>(a[2]),
                                 static_cast<float>(a[3]), algo);
  const uint8_t lo = kLoOf[m], hi = kHiOf[m];
  // Bit masks, not a[lo] (a dynamic index keeps the group in memory: a store-forwarding stall) nor
  // conditionals (data-dependent branches): the kept values are copied bit for bit.
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint16_t>;
  Bits b[4], o0 = 0, o1 = 0;
  std::memcpy(b, a, sizeof b);
  for (int i = 0; i < 4; ++i) {
    o0 |= b[i] & static_cast<Bits>(-static_cast<Bits>(lo == i));
    o1 |= b[i] & static_cast<Bits>(-static_cast<Bits>(hi == i));
  }
  std::memcpy(v, &o0, sizeof o0);
  std::memcpy(v + 1, &o1, sizeof o1);
  idx[0] = lo;
  idx[1] = hi;
}

// fp32 runs of groups (a row of sparsify24, a column run of the transposed split), four groups at
// a time in SSE2 (baseline x86-64) with exactly select_mask's rule: four groups transposed so that
// each register holds one position of the four groups, the ranks from the same comparisons (ordered,
// NaN-free), the kept pair as lane masks, the values copied bit for bit by blends. A chunk with a
// NaN, the tail and other targets take select_and_store group by group. n: a multiple of 4.
inline void select_run_f32(const float* x, int64_t n, int algo, float* v, uint8_t* idx) {
  int64_t t = 0;
#if defined(__SSE2__)
  const __m128 absmask = _mm_castsi128_ps(_mm_set1_epi32(0x7FFFFFFF));
  const __m128i minus2 = _mm_set1_epi32(-2);
  for (; t + 16 <= n; t += 16) {
    __m128 b0 = _mm_loadu_ps(x + t), b1 = _mm_loadu_ps(x + t + 4), b2 = _mm_loadu_ps(x + t + 8),
           b3 = _mm_loadu_ps(x + t + 12);
    _MM_TRANSPOSE4_PS(b0, b1, b2, b3);  // bq: position q of the four groups
    const __m128 unord = _mm_or_ps(_mm_or_ps(_mm_cmpunord_ps(b0, b0), _mm_cmpunord_ps(b1, b1)),
                                   _mm_or_ps(_mm_cmpunord_ps(b2, b2), _mm_cmpunord_ps(b3, b3)));
    if (_mm_movemask_ps(unord)) {
      for (int64_t u = t; u < t + 16; u += 4) {
        const float a[4] = {x[u], x[u + 1], x[u + 2], x[u + 3]};
        select_and_store(a, algo, v + u / 2, idx + u / 2);
      }
      continue;
    }
    __m128 a0 = b0, a1 = b1, a2 = b2, a3 = b3;
    if (algo == kLargestAbs) {
      a0 = _mm_and_ps(a0, absmask);
      a1 = _mm_and_ps(a1, absmask);
      a2 = _mm_and_ps(a2, absmask);
      a3 = _mm_and_ps(a3, absmask);
    }
    auto I = [](__m128 m) { return _mm_castps_si128(m); };
    // -(rank): the sum of three all-ones masks; kept iff rank < 2, i.e. -(rank) > -2
    const __m128i r0 = _mm_add_epi32(_mm_add_epi32(I(_mm_cmpgt_ps(a1, a0)), I(_mm_cmpgt_ps(a2, a0))), I(_mm_cmpgt_ps(a3, a0)));
    const __m128i r1 = _mm_add_epi32(_mm_add_epi32(I(_mm_cmpge_ps(a0, a1)), I(_mm_cmpgt_ps(a2, a1))), I(_mm_cmpgt_ps(a3, a1)));
    const __m128i r2 = _mm_add_epi32(_mm_add_epi32(I(_mm_cmpge_ps(a0, a2)), I(_mm_cmpge_ps(a1, a2))), I(_mm_cmpgt_ps(a3, a2)));
    const __m128i r3 = _mm_add_epi32(_mm_add_epi32(I(_mm_cmpge_ps(a0, a3)), I(_mm_cmpge_ps(a1, a3))), I(_mm_cmpge_ps(a2, a3)));
    const __m128i k0 = _mm_cmpgt_epi32(r0, minus2), k1 = _mm_cmpgt_epi32(r1, minus2);
    const __m128i k2 = _mm_cmpgt_epi32(r2, minus2), k3 = _mm_cmpgt_epi32(r3, minus2);
    // exactly two positions are kept: lo the first, hi the last
    const __m128i lo1 = _mm_andnot_si128(k0, k1), lo2 = _mm_andnot_si128(_mm_or_si128(k0, k1), _mm_set1_epi32(-1));
    const __m128i hi2 = _mm_andnot_si128(k3, k2), hi1 = _mm_andnot_si128(_mm_or_si128(k3, k2), _mm_set1_epi32(-1));
    const __m128i o0 = _mm_or_si128(_mm_or_si128(_mm_and_si128(I(b0), k0), _mm_and_si128(I(b1), lo1)),
                                    _mm_and_si128(I(b2), lo2));
    const __m128i o1 = _mm_or_si128(_mm_or_si128(_mm_and_si128(I(b3), k3), _mm_and_si128(I(b2), hi2)),
                                    _mm_and_si128(I(b1), hi1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(v + t / 2), _mm_unpacklo_epi32(o0, o1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(v + t / 2 + 4), _mm_unpackhi_epi32(o0, o1));
    const __m128i one = _mm_set1_epi32(1), two = _mm_set1_epi32(2), three = _mm_set1_epi32(3);
    const __m128i lo = _mm_or_si128(_mm_and_si128(lo1, one), _mm_and_si128(lo2, two));
    const __m128i hi = _mm_or_si128(_mm_or_si128(_mm_and_si128(hi1, one), _mm_and_si128(hi2, two)),
                                    _mm_and_si128(k3, three));
    const __m128i pair = _mm_or_si128(lo, _mm_slli_epi32(hi, 8));  // bytes lo, hi of each group
    const __m128i p16 = _mm_packs_epi32(pair, pair);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(idx + t / 2), p16);
  }
#endif
  for (; t < n; t += 4) {
    const float a[4] = {x[t], x[t + 1], x[t + 2], x[t + 3]};
    select_and_store(a, algo, v + t / 2, idx + t / 2);
  }
}

// sp24::relu2 (sp24/select.h) bit for bit, in integer operations that the compiler vectorises (GCC
// keeps a data-dependent branch per element for any floating-point select form, measured): the
// negative numbers -0.0 .. -inf (bits 0x80000000 .. 0xFF800000) become +0.0, everything else passes,
// then the same fp32 multiply as relu2, and a NaN (of either sign, any payload) becomes the canonical
// NaN as relu2 makes it.
inline float relu2_cpu(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  const uint32_t negative = (b - 0x80000000u) <= 0x7F800000u;
  b &= negative - 1u;
  float r;
  std::memcpy(&r, &b, sizeof r);
  r = r * r;
  std::memcpy(&b, &r, sizeof b);
  const uint32_t nan = (b & 0x7FFFFFFFu) > 0x7F800000u;
  b = (b & (nan - 1u)) | (kNanBitsF32 & (0u - nan));
  std::memcpy(&r, &b, sizeof r);
  return r;
}

// Per row: the activation (if any) into a per-thread row buffer, the counts, then the selection; each
// pass is a plain loop over the row (the first two vectorise). Params are copied to locals: the
// uint8_t index stores may alias anything, which would otherwise reload them in the inner loop.
template <typename T, bool kRelu2, bool kCounts>
void sparsify24_rows_impl(const Sparsify24Params& p) {
  const T* x = static_cast<const T*>(p.x);
  T* values = static_cast<T*>(p.values);
  uint8_t* indices = p.indices;
  const int64_t K = p.K, G = p.K / 4, stride = p.x_row_stride;
  const int algo = p.algo;
  // Per-thread column counts, reduced at the end: deterministic and free of atomics.
  const int nthreads = at::get_num_threads();
  std::vector<std::vector<int32_t>> partial(kCounts ? nthreads : 0);
  at::parallel_for(0, p.M, kGrain, [&](int64_t r0, int64_t r1) {
    int32_t* cnt = nullptr;
    if constexpr (kCounts) {
      // the team never exceeds torch's thread count with one OpenMP runtime; a mismatch (two runtimes
      // in one process) is an error here, not a write past `partial`
      const int tid = at::get_thread_num();
      TORCH_CHECK(tid >= 0 && tid < nthreads, "sp24.sparsify24: internal error: CPU thread ", tid,
                  " of a team larger than torch's ", nthreads, " threads (more than one OpenMP runtime loaded?)");
      auto& mine = partial[tid];
      if (mine.empty()) mine.assign(K, 0);
      cnt = mine.data();
    }
    std::vector<T> act(kRelu2 ? K : 0);
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * stride;
      if constexpr (kRelu2) {
        T* a = act.data();
        for (int64_t k = 0; k < K; ++k) a[k] = round_to<T>(relu2_cpu(static_cast<float>(xr[k])));  // ranked as stored
        xr = a;
      }
      if constexpr (kCounts) {
        for (int64_t k = 0; k < K; ++k) cnt[k] += static_cast<float>(xr[k]) != 0.f;  // NaN != 0: non-zero
      }
      T* vr = values + r * (K / 2);
      uint8_t* ir = indices + r * (K / 2);
      if constexpr (std::is_same_v<T, float>) {
        select_run_f32(xr, 4 * G, algo, vr, ir);
      } else {
        for (int64_t g = 0; g < G; ++g) {
          const T a[4] = {xr[4 * g], xr[4 * g + 1], xr[4 * g + 2], xr[4 * g + 3]};
          select_and_store(a, algo, vr + 2 * g, ir + 2 * g);
        }
      }
    }
  });
  if constexpr (kCounts) {
    for (auto& part : partial)
      if (!part.empty())
        for (int64_t k = 0; k < K; ++k) p.counts[k] += part[k];
  }
}

template <typename T>
void sparsify24_rows(const Sparsify24Params& p) {
  if (p.relu2) {
    p.counts ? sparsify24_rows_impl<T, true, true>(p) : sparsify24_rows_impl<T, true, false>(p);
  } else {
    p.counts ? sparsify24_rows_impl<T, false, true>(p) : sparsify24_rows_impl<T, false, false>(p);
  }
}

template <typename T>
void sparsify24_transposed_rows(const Sparsify24TransposedParams& p) {
  const T* x = static_cast<const T*>(p.x);
  T* values = static_cast<T*>(p.values);
  // Tiles of kTokTile tokens: output row c gets a contiguous run per tile, and the tile's input rows
  // stay in cache while its columns are read.
  at::parallel_for(0, (p.T + kTokTile - 1) / kTokTile, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t t0 = b * kTokTile, t1 = std::min(p.T, t0 + kTokTile);
      for (int64_t c = 0; c < p.C; ++c) {
        const T* xc = x + (p.columns ? p.columns[c] : c);
        T* vr = values + c * (p.T / 2);
        uint8_t* ir = p.indices + c * (p.T / 2);
        for (int64_t t = t0; t < t1; t += 4) {
          const T a[4] = {xc[t * p.x_row_stride], xc[(t + 1) * p.x_row_stride], xc[(t + 2) * p.x_row_stride],
                          xc[(t + 3) * p.x_row_stride]};
          select_and_store(a, p.algo, vr + t / 2, ir + t / 2);
        }
      }
    }
  });
}

// Row by row, a group (two kept slots) at a time, from locals: the T stores could otherwise alias the
// params and reload them in the inner loop. `& 3` keeps a corrupted index inside its group: never a
// read outside x.
template <typename T, bool kRelu2Backward>
void apply24_rows_impl(const Apply24Params& p) {
  const T* x = static_cast<const T*>(p.x);
  const T* y2 = static_cast<const T*>(p.y2_values);
  T* values = static_cast<T*>(p.values);
  const uint8_t* indices = p.indices;
  const int64_t H = p.K / 2, stride = p.x_row_stride;
  at::parallel_for(0, p.M, kGrain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * stride;
      const uint8_t* ir = indices + r * H;
      T* vr = values + r * H;
      const T* yr = kRelu2Backward ? y2 + r * H : nullptr;
      for (int64_t h = 0; h < H; h += 2) {
        const T* xg = xr + 2 * h;  // the group's 4 inputs
        const T a = xg[ir[h] & 3], b = xg[ir[h + 1] & 3];
        if constexpr (kRelu2Backward) {
          vr[h] = round_to<T>(relu2_backward(static_cast<float>(a), static_cast<float>(yr[h])));
          vr[h + 1] = round_to<T>(relu2_backward(static_cast<float>(b), static_cast<float>(yr[h + 1])));
        } else {
          vr[h] = a;
          vr[h + 1] = b;
        }
      }
    }
  });
}

template <typename T>
void apply24_rows(const Apply24Params& p) {
  p.relu2_backward ? apply24_rows_impl<T, true>(p) : apply24_rows_impl<T, false>(p);
}

// A group at a time: its four outputs zeroed, then the two kept values (the second wins if a
// corrupted pair repeats a position; `& 3` keeps it inside the group).
template <typename T>
void to_dense24_rows(const ToDense24Params& p) {
  const T* values = static_cast<const T*>(p.values);
  const uint8_t* indices = p.indices;
  T* out = static_cast<T*>(p.out);
  const int64_t H = p.K / 2, K = p.K;
  at::parallel_for(0, p.M, kGrain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T* o = out + r * K;
      const T* vr = values + r * H;
      const uint8_t* ir = indices + r * H;
      for (int64_t h = 0; h < H; h += 2) {
        T* og = o + 2 * h;
        og[0] = og[1] = og[2] = og[3] = T(0.f);
        og[ir[h] & 3] = vr[h];
        og[ir[h + 1] & 3] = vr[h + 1];
      }
    }
  });
}

template <typename T>
void transposed_split_rows(const TransposedSplit24Params& p) {
  const T* values = static_cast<const T*>(p.values);
  T* tvalues = static_cast<T*>(p.tvalues);
  T* dense_t = static_cast<T*>(p.dense_t);
  const int64_t H = p.F / 2;
  // Output rows 0..Cs-1: the token-direction 2:4 of sparse_cols; 0..Cd-1 of dense_t: dense_cols.
  // Per tile of kTokTile tokens, the dense form of its rows is written column-major into a
  // per-thread buffer (+0.0 at a dropped position; `& 3` as in to_dense, and the second index of a
  // pair wins if a corrupted pair repeats a position, as to_dense writes it last), then every output
  // row reads its column as one contiguous run.
  // Tokens per tile: kTokTile, or more while the tile's buffer stays within kSplitTileBytes (small
  // F): longer runs per output row and fewer tiles (each pays a fill and per-row set-up).
  const int64_t tile = split_tile_tokens(p.F, sizeof(T));
  const uint8_t* indices = p.indices;
  const int64_t T_ = p.T, Cs = p.Cs, Cd = p.Cd;
  const int algo = p.algo;
  at::parallel_for(0, (T_ + tile - 1) / tile, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> buf(static_cast<size_t>(p.F) * tile);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t t0 = b * tile, n = std::min(T_, t0 + tile) - t0;
      std::fill(buf.begin(), buf.end(), T(0.f));
      T* bp = buf.data();
      for (int64_t t = 0; t < n; ++t) {
        const T* vr = values + (t0 + t) * H;
        const uint8_t* ir = indices + (t0 + t) * H;
        for (int64_t h = 0; h < H; h += 2) {
          T* g = bp + (2 * h) * tile + t;
          g[(ir[h] & 3) * tile] = vr[h];
          g[(ir[h + 1] & 3) * tile] = vr[h + 1];
        }
      }
      for (int64_t c = 0; c < Cs; ++c) {
        const T* col = bp + p.sparse_cols[c] * tile;
        T* vr = tvalues + c * (T_ / 2) + t0 / 2;
        uint8_t* ir = p.tindices + c * (T_ / 2) + t0 / 2;
        if constexpr (std::is_same_v<T, float>) {
          select_run_f32(col, n, algo, vr, ir);
        } else {
          for (int64_t t = 0; t < n; t += 4) {
            const T a[4] = {col[t], col[t + 1], col[t + 2], col[t + 3]};
            select_and_store(a, algo, vr + t / 2, ir + t / 2);
          }
        }
      }
      for (int64_t c = 0; c < Cd; ++c) {
        std::memcpy(dense_t + c * T_ + t0, bp + p.dense_cols[c] * tile, n * sizeof(T));
      }
    }
  });
}

template <typename T>
void quantize_rows_e4m3_rows(const QuantizeRowsParams& p) {
  at::parallel_for(0, p.M, kGrain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* v = static_cast<const T*>(p.values) + r * p.n;
      E4M3RowStats st;
      for (int64_t c = 0; c < p.n; ++c) st.add(static_cast<float>(v[c]));
      const float scale = e4m3_row_scale(st);
      p.scales[r] = scale;
      uint8_t* q = p.q + r * p.n;
      for (int64_t c = 0; c < p.n; ++c) q[c] = e4m3_quantize(static_cast<float>(v[c]), scale, st.finite());
    }
  });
}

}  // namespace

void quantize_rows_e4m3_cpu(const QuantizeRowsParams& p) {
  dispatch_dtype(p.dtype, [&](auto t) { quantize_rows_e4m3_rows<decltype(t)>(p); });
}

void sparsify24_cpu(const Sparsify24Params& p) {
  dispatch_dtype(p.dtype, [&](auto t) { sparsify24_rows<decltype(t)>(p); });
}
void sparsify24_transposed_cpu(const Sparsify24TransposedParams& p) {
  dispatch_dtype(p.dtype, [&](auto t) { sparsify24_transposed_rows<decltype(t)>(p); });
}
void apply24_cpu(const Apply24Params& p) {
  dispatch_dtype(p.dtype, [&](auto t) { apply24_rows<decltype(t)>(p); });
}
void to_dense24_cpu(const ToDense24Params& p) {
  dispatch_dtype(p.dtype, [&](auto t) { to_dense24_rows<decltype(t)>(p); });
}

void transposed_split24_cpu(const TransposedSplit24Params& p) {
  dispatch_dtype(p.dtype, [&](auto t) { transposed_split_rows<decltype(t)>(p); });
}

}  // namespace sp24
