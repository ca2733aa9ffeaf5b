// CUDA kernels for the sp24 ops. Torch-free: they take a Params struct and a stream.
//
// Every kernel selects with sp24/select.h, the same function as the CPU kernels, so both backends
// agree bit for bit. The hot kernels are memory-bound; they move 16-byte vectors where the data is
// aligned for it and fall back to element-wise access (same arithmetic) where it is not:
//
//   sparsify24            row-wise 2:4 (+ fused relu2, + per-column non-zero counts)
//       thread = 8 consecutive elements (2 groups) of 8 rows; block = 32 x 8 threads covers
//       256 columns x 64 rows; all 8 row loads are issued before any is used. Counts: per-thread
//       registers -> shared-memory reduction over the 8 thread-rows -> one int atomicAdd per column
//       per block (integer atomics commute, so counts are deterministic).
//   sparsify24_transposed 2:4 along the tokens of x (T, N) for a column subset
//       block = 64 tokens x 64 *x columns* tile in shared memory. Reads follow x's memory order
//       (coalesced, vectorised), whatever order `columns` has; each x column is written to the
//       output row(s) that ask for it through an inverse map inv[col] (-1: not selected). Columns
//       listed more than once get their extra copies from a small fix-up kernel.
//   sparse24_apply(_relu2_backward), sparse24_to_dense: one thread per group of 4.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "sp24/params.h"
#include "sp24/select.h"

namespace sp24 {
namespace {

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

void check_launch(const char* what) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw std::runtime_error(std::string("sp24: CUDA launch of ") + what + " failed: " + cudaGetErrorString(e));
}

template <typename F>
void dispatch_dtype(DType d, F&& f) {
  switch (d) {
    case DType::kFloat32: f(float{}); break;
    case DType::kFloat16: f(__half{}); break;
    case DType::kBFloat16: f(__nv_bfloat16{}); break;
  }
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Selects the kept pair of a group: (a[lo], a[hi]) without dynamic register indexing.
template <typename T>
__device__ __forceinline__ void pick(const T (&a)[4], uint8_t lo, uint8_t hi, T& v0, T& v1) {
  v0 = lo == 0 ? a[0] : lo == 1 ? a[1] : a[2];
  v1 = hi == 3 ? a[3] : hi == 2 ? a[2] : a[1];
}

// ---------------------------------------------------------------------------------------------
// Row-wise sparsify.
constexpr int kRowTx = 32;         // threads along K (8 elements each: 256 columns per block)
constexpr int kRowTy = 8;          // thread-rows per block
constexpr int kRowsPerThread = 8;  // rows per thread (interleaved by kRowTy): 64 rows per block
constexpr int kRowElems = 8;       // elements per thread per row (2 groups)

// 8 elements as raw 16-byte chunks (1 chunk for 16-bit types, 2 for fp32).
template <typename T>
struct Vec8 {
  static constexpr int kChunks = sizeof(T) * kRowElems / 16;
  union {
    uint4 u[kChunks];
    T e[kRowElems];
  };
};

template <typename T, bool kVec>
__global__ void __launch_bounds__(kRowTx* kRowTy) sparsify24_rows_kernel(Sparsify24Params p) {
  __shared__ int32_t s_counts[kRowTy][kRowTx * kRowElems];
  const int tx = threadIdx.x, ty = threadIdx.y;
  // grid.x: row blocks (can be many), grid.y: column blocks (K / 256 < 65536)
  const int64_t c0 = (static_cast<int64_t>(blockIdx.y) * kRowTx + tx) * kRowElems;  // first column
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * (kRowTy * kRowsPerThread) + ty;
  const T* __restrict__ x = static_cast<const T*>(p.x);
  T* __restrict__ vals = static_cast<T*>(p.values);
  const int64_t H = p.K / 2;
  // Groups of this thread that lie inside the row (K % 4 == 0: groups are whole).
  const int ngroups = c0 >= p.K ? 0 : (c0 + 4 >= p.K ? 1 : 2);

  Vec8<T> in[kRowsPerThread];
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
    const int64_t r = r0 + i * kRowTy;
    if (r < p.M && ngroups > 0) {
      const T* src = x + r * p.x_row_stride + c0;
      if constexpr (kVec) {
#pragma unroll
        for (int k = 0; k < Vec8<T>::kChunks; ++k) in[i].u[k] = __ldg(reinterpret_cast<const uint4*>(src) + k);
      } else {
#pragma unroll
        for (int e = 0; e < kRowElems; ++e) in[i].e[e] = e < 4 * ngroups ? src[e] : from_f<T>(0.f);
      }
    }
  }

  int32_t cnt[kRowElems];
#pragma unroll
  for (int e = 0; e < kRowElems; ++e) cnt[e] = 0;

#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
    const int64_t r = r0 + i * kRowTy;
    if (r >= p.M || ngroups == 0) continue;
    T ov[4];
    uint8_t oi[4];
#pragma unroll
    for (int g = 0; g < 2; ++g) {
      T a[4];
      float f[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        a[j] = in[i].e[4 * g + j];
        f[j] = to_f(a[j]);
        if (p.relu2) {
          a[j] = from_f<T>(relu2(f[j]));  // fp32, one rounding; selection on the rounded value
          f[j] = to_f(a[j]);
        }
        cnt[4 * g + j] += (f[j] != 0.f) ? 1 : 0;  // NaN != 0: counted
      }
      uint8_t lo, hi;
      mask_to_indices(select_2of4(f[0], f[1], f[2], f[3], p.algo), lo, hi);
      pick(a, lo, hi, ov[2 * g], ov[2 * g + 1]);
      oi[2 * g] = lo;
      oi[2 * g + 1] = hi;
    }
    T* vdst = vals + r * H + c0 / 2;
    uint8_t* idst = p.indices + r * H + c0 / 2;
    if (kVec) {  // K % 8 == 0: 4 values (8 or 16 bytes) and 4 indices (4 bytes), aligned
      if constexpr (sizeof(T) == 2) {
        uint2 w;
        __builtin_memcpy(&w, ov, 8);
        *reinterpret_cast<uint2*>(vdst) = w;
      } else {
        uint4 w;
        __builtin_memcpy(&w, ov, 16);
        *reinterpret_cast<uint4*>(vdst) = w;
      }
      *reinterpret_cast<uint32_t*>(idst) =
          uint32_t(oi[0]) | (uint32_t(oi[1]) << 8) | (uint32_t(oi[2]) << 16) | (uint32_t(oi[3]) << 24);
    } else {
      for (int e = 0; e < 2 * ngroups; ++e) {
        vdst[e] = ov[e];
        idst[e] = oi[e];
      }
    }
  }

  if (p.counts == nullptr) return;  // uniform over the block
#pragma unroll
  for (int e = 0; e < kRowElems; ++e) s_counts[ty][tx * kRowElems + e] = cnt[e];
  __syncthreads();
  for (int k = ty * kRowTx + tx; k < kRowTx * kRowElems; k += kRowTx * kRowTy) {
    int32_t s = 0;
#pragma unroll
    for (int y = 0; y < kRowTy; ++y) s += s_counts[y][k];
    const int64_t col = static_cast<int64_t>(blockIdx.y) * kRowTx * kRowElems + k;
    if (col < p.K && s != 0) atomicAdd(p.counts + col, s);
  }
}

// ---------------------------------------------------------------------------------------------
// Transposed sparsify (2:4 along tokens), tiled in x's column space.
constexpr int kTT = 64;            // tokens per tile
constexpr int kTC = 64;            // x columns per tile
constexpr int kTThreads = 256;
constexpr int kTPad = 2;           // elements of padding per smem row (bank spread)

__global__ void inverse_columns_kernel(const int64_t* __restrict__ columns, int64_t C, int64_t N,
                                       int32_t* __restrict__ inv) {
  // inv[col] = the largest c with columns[c] == col (deterministic under duplicates), else -1.
  // inv is pre-filled with -1 (memset 0xff).
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int64_t col = columns[c];
  if (col < 0 || col >= N) return;  // the host refuses these; never write outside inv
  atomicMax(inv + col, static_cast<int32_t>(c));
}

template <typename T>
__global__ void __launch_bounds__(kTThreads) sparsify24_transposed_kernel(Sparsify24TransposedParams p,
                                                                          const int32_t* __restrict__ inv,
                                                                          bool vec_load, bool vec_store) {
  __shared__ T tile[kTT][kTC + kTPad];  // [token][column]
  const int tid = threadIdx.x;
  // grid.x: token tiles (can be many), grid.y: column tiles (N / 64 < 65536)
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTC;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kTT;
  const T* __restrict__ x = static_cast<const T*>(p.x);

  // Load: 64 tokens x 64 columns. Columns nobody asked for are not read (they stay unused).
  if (vec_load) {
    // 16-byte chunks: E elements each, kTC/E chunks per token row.
    constexpr int E = 16 / sizeof(T);
    constexpr int kChunksPerRow = kTC / E;
    constexpr int kRowsPerPass = kTThreads / kChunksPerRow;
    const int ch = tid % kChunksPerRow;
    const int64_t n = n0 + ch * E;
    bool wanted = n < p.N;  // N % E == 0 in this mode: the chunk is whole or outside
    if (wanted && inv) {
      bool any = false;
#pragma unroll
      for (int e = 0; e < E; ++e) any |= inv[n + e] >= 0;
      wanted = any;
    }
    uint4 buf[kTT / kRowsPerPass];
#pragma unroll
    for (int k = 0; k < kTT / kRowsPerPass; ++k) {
      const int64_t t = t0 + tid / kChunksPerRow + k * kRowsPerPass;
      buf[k] = (wanted && t < p.T) ? __ldg(reinterpret_cast<const uint4*>(x + t * p.x_row_stride + n))
                                   : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int k = 0; k < kTT / kRowsPerPass; ++k) {
      const int tt = tid / kChunksPerRow + k * kRowsPerPass;
      T e8[E];
      __builtin_memcpy(e8, &buf[k], 16);
#pragma unroll
      for (int e = 0; e < E; ++e) tile[tt][ch * E + e] = e8[e];
    }
  } else {
    const int j = tid % kTC;
    const int64_t n = n0 + j;
    const bool wanted = n < p.N && (inv == nullptr || inv[n] >= 0);
    T buf[kTT * kTC / kTThreads];
#pragma unroll
    for (int k = 0; k < kTT * kTC / kTThreads; ++k) {
      const int64_t t = t0 + tid / kTC + k * (kTThreads / kTC);
      buf[k] = (wanted && t < p.T) ? x[t * p.x_row_stride + n] : from_f<T>(0.f);
    }
#pragma unroll
    for (int k = 0; k < kTT * kTC / kTThreads; ++k) tile[tid / kTC + k * (kTThreads / kTC)][j] = buf[k];
  }
  __syncthreads();

  // Compute + store: thread = one x column, 16 tokens (4 groups) -> 8 values + 8 indices.
  const int j = tid / 4, part = tid % 4;
  const int64_t n = n0 + j;
  if (n >= p.N) return;
  const int64_t orow = inv ? inv[n] : n;
  if (orow < 0) return;
  const int64_t H = p.T / 2;
  T ov[8];
  uint8_t oi[8];
  int ngroups = 0;
#pragma unroll
  for (int g = 0; g < 4; ++g) {
    const int tt = part * 16 + 4 * g;
    if (t0 + tt >= p.T) break;  // T % 4 == 0: groups are whole
    T a[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) a[i] = tile[tt + i][j];
    uint8_t lo, hi;
    mask_to_indices(select_2of4(to_f(a[0]), to_f(a[1]), to_f(a[2]), to_f(a[3]), p.algo), lo, hi);
    pick(a, lo, hi, ov[2 * g], ov[2 * g + 1]);
    oi[2 * g] = lo;
    oi[2 * g + 1] = hi;
    ngroups = g + 1;
  }
  if (ngroups == 0) return;
  const int64_t off = orow * H + (t0 + part * 16) / 2;
  T* vdst = static_cast<T*>(p.values) + off;
  uint8_t* idst = p.indices + off;
  if (vec_store && ngroups == 4) {  // T % 16 == 0 (and 8 fp32): 16/32-byte aligned destinations
    constexpr int kC = sizeof(T) * 8 / 16;
    uint4 w[kC];
    __builtin_memcpy(w, ov, sizeof(ov));
#pragma unroll
    for (int k = 0; k < kC; ++k) reinterpret_cast<uint4*>(vdst)[k] = w[k];
    uint2 wi;
    __builtin_memcpy(&wi, oi, 8);
    *reinterpret_cast<uint2*>(idst) = wi;
  } else {
    for (int e = 0; e < 2 * ngroups; ++e) {
      vdst[e] = ov[e];
      idst[e] = oi[e];
    }
  }
}

// Output rows c whose column is also listed at a larger c' (inv[col] == c' != c) were not
// written by the main kernel: copy them from row c'.
template <typename T>
__global__ void transposed_duplicates_kernel(Sparsify24TransposedParams p, const int32_t* __restrict__ inv) {
  const int64_t c = blockIdx.x;
  int64_t col = p.columns[c];
  col = col < 0 ? 0 : (col >= p.N ? p.N - 1 : col);
  const int64_t src = inv[col];
  if (src == c || src < 0) return;
  const int64_t H = p.T / 2;
  T* v = static_cast<T*>(p.values);
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) {
    v[c * H + h] = v[src * H + h];
    p.indices[c * H + h] = p.indices[src * H + h];
  }
}

// ---------------------------------------------------------------------------------------------
constexpr int kThreads = 256;
inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

template <typename T>
__global__ void apply24_kernel(Apply24Params p) {
  // One thread per group: 2 indices in, 2 values out.
  const int64_t G = p.K / 4;
  const int64_t gid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (gid >= p.M * G) return;
  const int64_t r = gid / G, g = gid % G;
  const T* xr = static_cast<const T*>(p.x) + r * p.x_row_stride + 4 * g;
  const uint8_t i0 = p.indices[2 * gid] & 3, i1 = p.indices[2 * gid + 1] & 3;
  T v[2] = {xr[i0], xr[i1]};
  T* out = static_cast<T*>(p.values) + 2 * gid;
  if (p.relu2_backward) {
    const T* y2 = static_cast<const T*>(p.y2_values) + 2 * gid;
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      const float d = 2.f * sqrtf(to_f(y2[s]));
      v[s] = from_f<T>(to_f(v[s]) * d);
    }
  }
  out[0] = v[0];
  out[1] = v[1];
}

template <typename T>
__global__ void to_dense24_kernel(ToDense24Params p) {
  // One thread per group of 4 outputs: writes every output element exactly once, as one
  // 8-byte (16-bit types) or 16-byte (fp32) store.
  const int64_t G = p.K / 4;
  const int64_t gid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (gid >= p.M * G) return;
  const T* v = static_cast<const T*>(p.values) + 2 * gid;
  const uint8_t* ix = p.indices + 2 * gid;
  const T zero = from_f<T>(0.f);
  const T v0 = v[0], v1 = v[1];
  const uint8_t i0 = ix[0] & 3, i1 = ix[1] & 3;
  T o[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) o[i] = i == i1 ? v1 : (i == i0 ? v0 : zero);
  T* out = static_cast<T*>(p.out) + 4 * gid;
  if constexpr (sizeof(T) == 2) {
    uint2 w;
    __builtin_memcpy(&w, o, 8);
    *reinterpret_cast<uint2*>(out) = w;
  } else {
    uint4 w;
    __builtin_memcpy(&w, o, 16);
    *reinterpret_cast<uint4*>(out) = w;
  }
}

}  // namespace

void sparsify24_cuda(const Sparsify24Params& p, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  dispatch_dtype(p.dtype, [&](auto t) {
    using T = decltype(t);
    const bool vec = p.K % 8 == 0 && aligned16(p.x) && (p.x_row_stride * static_cast<int64_t>(sizeof(T))) % 16 == 0;
    const dim3 block(kRowTx, kRowTy);
    const int64_t col_blocks = (p.K + kRowTx * kRowElems - 1) / (kRowTx * kRowElems);
    if (col_blocks > 65535) throw std::runtime_error("sp24.sparsify24: x.size(1) must be below 16776960, got " + std::to_string(p.K));
    const dim3 grid(static_cast<unsigned>((p.M + kRowTy * kRowsPerThread - 1) / (kRowTy * kRowsPerThread)),
                    static_cast<unsigned>(col_blocks));
    if (vec) {
      sparsify24_rows_kernel<T, true><<<grid, block, 0, s>>>(p);
    } else {
      sparsify24_rows_kernel<T, false><<<grid, block, 0, s>>>(p);
    }
  });
  check_launch("sparsify24");
}

void sparsify24_transposed_cuda(const Sparsify24TransposedParams& p, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  int32_t* inv = nullptr;
  if (p.columns) {
    if (p.workspace == nullptr) throw std::runtime_error("sp24.sparsify24_transposed: internal error: no workspace for the column map");
    inv = p.workspace;
    if (cudaMemsetAsync(inv, 0xff, p.N * sizeof(int32_t), s) != cudaSuccess) check_launch("sparsify24_transposed (memset)");
    inverse_columns_kernel<<<blocks_for(p.C), kThreads, 0, s>>>(p.columns, p.C, p.N, inv);
    check_launch("sparsify24_transposed (column map)");
  }
  dispatch_dtype(p.dtype, [&](auto t) {
    using T = decltype(t);
    constexpr int E = 16 / sizeof(T);
    const bool vec_load = p.N % E == 0 && aligned16(p.x) && (p.x_row_stride * static_cast<int64_t>(sizeof(T))) % 16 == 0;
    const bool vec_store = (p.T / 2 * static_cast<int64_t>(sizeof(T))) % 16 == 0 && (p.T / 2) % 8 == 0;
    const int64_t col_tiles = (p.N + kTC - 1) / kTC;
    if (col_tiles > 65535) throw std::runtime_error("sp24.sparsify24_transposed: x.size(1) must be below 4194240, got " + std::to_string(p.N));
    const dim3 grid(static_cast<unsigned>((p.T + kTT - 1) / kTT), static_cast<unsigned>(col_tiles));
    sparsify24_transposed_kernel<T><<<grid, kTThreads, 0, s>>>(p, inv, vec_load, vec_store);
    check_launch("sparsify24_transposed");
    if (p.columns) {
      transposed_duplicates_kernel<T><<<static_cast<unsigned>(p.C), 128, 0, s>>>(p, inv);
      check_launch("sparsify24_transposed (duplicate columns)");
    }
  });
}

void apply24_cuda(const Apply24Params& p, void* stream) {
  dispatch_dtype(p.dtype, [&](auto t) {
    apply24_kernel<decltype(t)><<<blocks_for(p.M * (p.K / 4)), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  });
  check_launch("sparse24_apply");
}

void to_dense24_cuda(const ToDense24Params& p, void* stream) {
  dispatch_dtype(p.dtype, [&](auto t) {
    to_dense24_kernel<decltype(t)><<<blocks_for(p.M * (p.K / 4)), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  });
  check_launch("sparse24_to_dense");
}

}  // namespace sp24
