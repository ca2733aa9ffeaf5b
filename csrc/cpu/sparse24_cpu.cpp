// CPU kernels: correct, deterministic, not fast. They define what the CUDA kernels must match bit
// for bit (the tests compare both against sp24.reference).
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <atomic>
#include <type_traits>
#include <vector>

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
  uint8_t lo, hi;
  mask_to_indices(select_2of4(static_cast<float>(a[0]), static_cast<float>(a[1]), static_cast<float>(a[2]),
                              static_cast<float>(a[3]), algo),
                  lo, hi);
  v[0] = a[lo];
  v[1] = a[hi];
  idx[0] = lo;
  idx[1] = hi;
}

template <typename T>
void sparsify24_rows(const Sparsify24Params& p) {
  const T* x = static_cast<const T*>(p.x);
  T* values = static_cast<T*>(p.values);
  const int64_t G = p.K / 4;
  // Per-thread column counts, reduced at the end: deterministic and free of atomics.
  const int nthreads = at::get_num_threads();
  std::vector<std::vector<int32_t>> partial(p.counts ? nthreads : 0);
  at::parallel_for(0, p.M, kGrain, [&](int64_t r0, int64_t r1) {
    int32_t* cnt = nullptr;
    if (p.counts) {
      auto& mine = partial[at::get_thread_num()];
      if (mine.empty()) mine.assign(p.K, 0);
      cnt = mine.data();
    }
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * p.x_row_stride;
      T* vr = values + r * (p.K / 2);
      uint8_t* ir = p.indices + r * (p.K / 2);
      for (int64_t g = 0; g < G; ++g) {
        T a[4];
        for (int i = 0; i < 4; ++i) {
          a[i] = xr[4 * g + i];
          if (p.relu2) a[i] = round_to<T>(relu2(static_cast<float>(a[i])));  // ranked as stored
          if (cnt && static_cast<float>(a[i]) != 0.f) cnt[4 * g + i] += 1;    // NaN != 0: non-zero
        }
        select_and_store(a, p.algo, vr + 2 * g, ir + 2 * g);
      }
    }
  });
  if (p.counts) {
    for (auto& part : partial)
      if (!part.empty())
        for (int64_t k = 0; k < p.K; ++k) p.counts[k] += part[k];
  }
}

template <typename T>
void sparsify24_transposed_rows(const Sparsify24TransposedParams& p) {
  const T* x = static_cast<const T*>(p.x);
  T* values = static_cast<T*>(p.values);
  const int64_t G = p.T / 4;
  at::parallel_for(0, p.C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t col = p.columns ? p.columns[c] : c;
      T* vr = values + c * (p.T / 2);
      uint8_t* ir = p.indices + c * (p.T / 2);
      for (int64_t g = 0; g < G; ++g) {
        T a[4];
        for (int i = 0; i < 4; ++i) a[i] = x[(4 * g + i) * p.x_row_stride + col];
        select_and_store(a, p.algo, vr + 2 * g, ir + 2 * g);
      }
    }
  });
}

template <typename T>
void apply24_rows(const Apply24Params& p) {
  const T* x = static_cast<const T*>(p.x);
  const T* y2 = static_cast<const T*>(p.y2_values);
  T* values = static_cast<T*>(p.values);
  const int64_t H = p.K / 2;
  at::parallel_for(0, p.M, kGrain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * p.x_row_stride;
      for (int64_t h = 0; h < H; ++h) {
        // `& 3` keeps a corrupted index inside its group: never a read outside x.
        const int64_t col = 4 * (h / 2) + (p.indices[r * H + h] & 3);
        if (p.relu2_backward) {
          values[r * H + h] = round_to<T>(relu2_backward(static_cast<float>(xr[col]), static_cast<float>(y2[r * H + h])));
        } else {
          values[r * H + h] = xr[col];
        }
      }
    }
  });
}

template <typename T>
void to_dense24_rows(const ToDense24Params& p) {
  const T* values = static_cast<const T*>(p.values);
  T* out = static_cast<T*>(p.out);
  const int64_t H = p.K / 2;
  at::parallel_for(0, p.M, kGrain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T* o = out + r * p.K;
      for (int64_t k = 0; k < p.K; ++k) o[k] = T(0.f);
      for (int64_t h = 0; h < H; ++h) o[4 * (h / 2) + (p.indices[r * H + h] & 3)] = values[r * H + h];
    }
  });
}

// Element (t, col) of the dense form of a row-wise 2:4 matrix with H = K/2 compressed columns, as
// sparse24_to_dense writes it: +0.0 at a dropped position; `& 3` as there, and the second index of
// a pair wins if a corrupted pair repeats a position (to_dense writes it last).
template <typename T>
inline T dense_at(const T* values, const uint8_t* indices, int64_t H, int64_t t, int64_t col) {
  const int64_t h = t * H + 2 * (col / 4);
  const int pos = static_cast<int>(col & 3);
  if ((indices[h + 1] & 3) == pos) return values[h + 1];
  if ((indices[h] & 3) == pos) return values[h];
  return T(0.f);
}

template <typename T>
void transposed_split_rows(const TransposedSplit24Params& p) {
  const T* values = static_cast<const T*>(p.values);
  T* tvalues = static_cast<T*>(p.tvalues);
  T* dense_t = static_cast<T*>(p.dense_t);
  const int64_t H = p.F / 2, G = p.T / 4;
  // Output rows 0..Cs-1: the token-direction 2:4 of sparse_cols; Cs..Cs+Cd-1: dense_cols.
  at::parallel_for(0, p.Cs + p.Cd, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      if (c >= p.Cs) {
        const int64_t col = p.dense_cols[c - p.Cs];
        T* o = dense_t + (c - p.Cs) * p.T;
        for (int64_t t = 0; t < p.T; ++t) o[t] = dense_at(values, p.indices, H, t, col);
        continue;
      }
      const int64_t col = p.sparse_cols[c];
      T* vr = tvalues + c * (p.T / 2);
      uint8_t* ir = p.tindices + c * (p.T / 2);
      for (int64_t g = 0; g < G; ++g) {
        T a[4];
        for (int i = 0; i < 4; ++i) a[i] = dense_at(values, p.indices, H, 4 * g + i, col);
        select_and_store(a, p.algo, vr + 2 * g, ir + 2 * g);
      }
    }
  });
}

}  // namespace

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
