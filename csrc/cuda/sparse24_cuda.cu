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
//   sparse24_transposed_split the FFN backward's feature split of a row-wise 2:4 A (T, F)
//       read from its compressed rows: the same 64 x 64 tile, decompressed into shared memory from
//       values/indices (one thread per group of 4 features of a token: 2 values + 2 indices,
//       consecutive threads on consecutive groups); then per feature column the token-direction
//       2:4 (inverse map of sparse_cols, the store shared with sparsify24_transposed) and/or the
//       dense transposed row (inverse map of dense_cols); duplicates by the same fix-up kernel.
//   sparse24_apply(_relu2_backward), sparse24_to_dense: one thread per group of 4.
//
// The tiled kernels number their blocks linearly over (grid.x, grid.y) (sp24/grid.h), so they have
// no shape limit of their own: any shape the CPU kernels accept launches.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/launch.cuh"
#include "sp24/cslt_layout.h"
#include "sp24/fp8.h"
#include "sp24/grid.h"
#include "sp24/params.h"
#include "sp24/select.h"

namespace sp24 {
namespace {

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
// A NaN is written as the canonical NaN (sp24/select.h) explicitly: the same bits as the CPU kernels
// whatever the conversion instruction or an emulation of it does with a NaN.
template <typename T>
__device__ __forceinline__ T nan16() {
  const uint16_t bits = kNanBits16;
  T t;
  __builtin_memcpy(&t, &bits, sizeof(t));
  return t;
}
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return is_nan(v) ? nan16<__half>() : __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return is_nan(v) ? nan16<__nv_bfloat16>() : __float2bfloat16_rn(v);
}

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

// 4 consecutive elements as one aligned vector store (8 bytes for 16-bit types, 16 for fp32).
template <typename T>
__device__ __forceinline__ void store4(T* dst, const T (&v)[4]) {
  if constexpr (sizeof(T) == 2) {
    uint2 w;
    __builtin_memcpy(&w, v, 8);
    *reinterpret_cast<uint2*>(dst) = w;
  } else {
    uint4 w;
    __builtin_memcpy(&w, v, 16);
    *reinterpret_cast<uint4*>(dst) = w;
  }
}

// ---------------------------------------------------------------------------------------------
// Row-wise sparsify.
constexpr int kRowTx = 32;         // threads along K (8 elements each: 256 columns per block)
constexpr int kRowTy = 8;          // thread-rows per block
constexpr int kRowsPerThread = 8;  // rows per thread (interleaved by kRowTy): 64 rows per block
constexpr int kRowElems = 8;       // elements per thread per row (2 groups)
static_assert(kRowTx * kRowElems == kRowTileCols && kRowTy * kRowsPerThread == kRowTileRows, "sp24/grid.h tiles");

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
  // block -> (row band rb, column block cb), sp24/grid.h; a padding block exits as a whole (no barrier yet)
  const int64_t bands = ceil_div(p.M, kRowTileRows);
  int64_t rb, cb;
  if (!tile_of(static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x, bands, bands * ceil_div(p.K, kRowTileCols),
               rb, cb)) {
    return;
  }
  const int64_t c0 = (cb * kRowTx + tx) * kRowElems;  // first column
  const int64_t r0 = rb * (kRowTy * kRowsPerThread) + ty;
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
  uint8_t nib[kRowsPerThread][2] = {};  // the 4-bit metadata of this thread's 2 groups, per row

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
      nib[i][g] = static_cast<uint8_t>(lo | (hi << 2));
    }
    T* vdst = vals + r * H + c0 / 2;
    uint8_t* idst = p.indices + r * H + c0 / 2;
    if constexpr (kVec) {  // K % 8 == 0: 4 values (8 or 16 bytes) and 4 indices (4 bytes), aligned
      store4(vdst, ov);
      *reinterpret_cast<uint32_t*>(idst) =
          uint32_t(oi[0]) | (uint32_t(oi[1]) << 8) | (uint32_t(oi[2]) << 16) | (uint32_t(oi[3]) << 24);
    } else {
      // Fully unrolled and guarded: a loop bounded by ngroups indexed ov/oi dynamically, which put
      // them in local memory (ptxas, sm_90a: 128 registers, 40-byte stack frame, 24 bytes of spills).
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if (e < 2 * ngroups) {
          vdst[e] = ov[e];
          idst[e] = oi[e];
        }
      }
    }
  }

  if constexpr (kVec) {
    if (p.cslt_meta != nullptr) {  // uniform over the launch
      // Rows ty + 16*q and ty + 16*q + 8 of this 64-row band share the metadata bytes of a group
      // (sp24/cslt_layout.h): row 8*hi + r8 of 16-row block r16 = q, r8 = ty. This thread's groups
      // g0 = c0/4 (h = 0) and g0 + 1 (h = 1) sit in 32-column chunk c32 = c0/32 with p = tx % 2 and
      // e = (tx % 4) / 2; the lane tx ^ 2 holds the other e, so each lane stores one 16-bit pair:
      // e = 0 lanes the two h = 0 bytes, e = 1 lanes the two h = 1 bytes.
      const int e = (tx & 3) >> 1, pp = tx & 1;
      const int64_t base = rb * 8 * p.K + (c0 / 32) * 256 + ty * 8 + pp * 4;
#pragma unroll
      for (int q = 0; q < kRowsPerThread / 2; ++q) {
        const bool ok = r0 + (2 * q + 1) * kRowTy < p.M && ngroups == 2;  // K % 32 == 0: whole chunks
        const uint32_t b0 = ok ? (nib[2 * q][0] | (nib[2 * q + 1][0] << 4)) : 0u;
        const uint32_t b1 = ok ? (nib[2 * q][1] | (nib[2 * q + 1][1] << 4)) : 0u;
        const uint32_t other = __shfl_xor_sync(0xffffffffu, b0 | (b1 << 8), 2);
        if (ok) {
          const uint16_t w = e == 0 ? static_cast<uint16_t>(b0 | ((other & 0xffu) << 8))
                                    : static_cast<uint16_t>((other >> 8) | (b1 << 8));
          *reinterpret_cast<uint16_t*>(p.cslt_meta + base + q * 64 + 2 * e) = w;
        }
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
    const int64_t col = cb * kRowTx * kRowElems + k;
    if (col < p.K && s != 0) atomicAdd(p.counts + col, s);
  }
}

// ---------------------------------------------------------------------------------------------
// Transposed sparsify (2:4 along tokens), tiled in x's column space.
constexpr int kTT = 64;            // tokens per tile
constexpr int kTC = 64;            // x columns per tile
constexpr int kTThreads = 256;
static_assert(kTT == kTTile && kTC == kTTile, "sp24/grid.h tiles");

// The shared tile of kTT tokens x kTC columns (sp24/grid.h, tile_offset): rows of kTC elements, no
// padding between them, and 32 bytes of padding after every 16-row block.
// Why: in the compute phase the 4 threads of a column (lanes 4j .. 4j+3, one per 16-token part)
// read rows 16 apart. A per-row pad of p words puts those rows 16*p words apart, which is 0 or 16
// (mod 32) for every p: with a pitch of 66 elements (a 2-element pad per row), 2 lanes would share a
// bank for 16-bit types and 4 for fp32. The 32-byte pad per 16-row block puts them 8 words apart: lane (j, part) reads
// bank 8*part + j (fp32) or 8*part + j/2 (16-bit; two lanes share a word), all distinct. Every row
// stays 16-byte aligned, so the load phase stores whole 16-byte chunks; a quarter-warp's chunks are
// 128 contiguous bytes of one row (conflict-free), as are a half-warp's 8-byte groups in the split.
// tests/test_grid_limits.py counts the conflicts of these access patterns on the host.
template <typename T>
struct TileLayout {
  static constexpr int kEs = static_cast<int>(sizeof(T));
  static_assert(tile_block_elems(kEs) * kEs % 16 == 0 && kTC * kEs % 16 == 0, "16-byte aligned rows");
  struct alignas(16) Storage {
    T e[tile_elems(kEs)];
  };
};
template <typename T>
__device__ __forceinline__ int tile_at(int t, int c) {
  return tile_offset(static_cast<int>(sizeof(T)), t, c);
}

__global__ void inverse_columns_kernel(const int64_t* __restrict__ columns, int64_t C, int64_t N,
                                       int32_t* __restrict__ inv) {
  // inv[col] = the largest c with columns[c] == col (deterministic under duplicates), else -1.
  // inv is pre-filled with -1 (memset 0xff). The glue refuses out-of-range columns on every device
  // (check_columns_range); the clamp to [0, N) is a second line: never a write outside inv.
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  int64_t col = columns[c];
  col = col < 0 ? 0 : (col >= N ? N - 1 : col);
  atomicMax(inv + col, static_cast<int32_t>(c));
}

// The tile of the block in a grid of kTT-token x kTC-column tiles over (T, N), folded onto grid.x
// then grid.y (sp24/grid.h): its first token t0 and column n0; false for a padding block of the
// last grid row, which must exit as a whole before any barrier.
__device__ __forceinline__ bool transposed_tile(int64_t T, int64_t N, int64_t& t0, int64_t& n0) {
  const int64_t ttiles = ceil_div(T, kTT);
  int64_t tb, cb;
  if (!tile_of(static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x, ttiles, ttiles * ceil_div(N, kTC), tb, cb))
    return false;
  t0 = tb * kTT;
  n0 = cb * kTC;
  return true;
}

// Token-direction 2:4 of tile column j (a 64-token tile starting at token t0; Ttok tokens in all):
// thread `part` handles 16 tokens (4 groups) -> 8 values + 8 indices of output row orow.
// Shared by sparsify24_transposed and sparse24_transposed_split.
template <typename T>
__device__ __forceinline__ void token24_store(const T* tile, int j, int part, int64_t t0,
                                              int64_t Ttok, int64_t orow, T* __restrict__ values,
                                              uint8_t* __restrict__ indices, int algo, bool vec_store) {
  const int64_t H = Ttok / 2;
  T ov[8];
  uint8_t oi[8];
  int ngroups = 0;
#pragma unroll
  for (int g = 0; g < 4; ++g) {
    const int tt = part * 16 + 4 * g;
    if (t0 + tt >= Ttok) break;  // Ttok % 4 == 0: groups are whole
    T a[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) a[i] = tile[tile_at<T>(tt + i, j)];
    uint8_t lo, hi;
    mask_to_indices(select_2of4(to_f(a[0]), to_f(a[1]), to_f(a[2]), to_f(a[3]), algo), lo, hi);
    pick(a, lo, hi, ov[2 * g], ov[2 * g + 1]);
    oi[2 * g] = lo;
    oi[2 * g + 1] = hi;
    ngroups = g + 1;
  }
  if (ngroups == 0) return;
  const int64_t off = orow * H + (t0 + part * 16) / 2;
  T* vdst = values + off;
  uint8_t* idst = indices + off;
  if (vec_store && ngroups == 4) {  // Ttok % 16 == 0 (and 8 fp32): 16/32-byte aligned destinations
    constexpr int kC = sizeof(T) * 8 / 16;
    uint4 w[kC];
    __builtin_memcpy(w, ov, sizeof(ov));
#pragma unroll
    for (int k = 0; k < kC; ++k) reinterpret_cast<uint4*>(vdst)[k] = w[k];
    uint2 wi;
    __builtin_memcpy(&wi, oi, 8);
    *reinterpret_cast<uint2*>(idst) = wi;
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) {  // unrolled and guarded: ov/oi stay in registers
      if (e < 2 * ngroups) {
        vdst[e] = ov[e];
        idst[e] = oi[e];
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kTThreads) sparsify24_transposed_kernel(Sparsify24TransposedParams p,
                                                                          const int32_t* __restrict__ inv,
                                                                          bool vec_load, bool vec_store) {
  __shared__ typename TileLayout<T>::Storage smem;  // [token][column], tile_at
  T* const tile = smem.e;
  const int tid = threadIdx.x;
  int64_t t0, n0;  // this block's first token and first column
  if (!transposed_tile(p.T, p.N, t0, n0)) return;  // a padding block exits as a whole
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
      *reinterpret_cast<uint4*>(tile + tile_at<T>(tt, ch * E)) = buf[k];  // 16-byte aligned (TileLayout)
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
    for (int k = 0; k < kTT * kTC / kTThreads; ++k) tile[tile_at<T>(tid / kTC + k * (kTThreads / kTC), j)] = buf[k];
  }
  __syncthreads();

  // Compute + store: thread = one x column, 16 tokens (4 groups) -> 8 values + 8 indices.
  const int j = tid / 4, part = tid % 4;
  const int64_t n = n0 + j;
  if (n >= p.N) return;
  const int64_t orow = inv ? inv[n] : n;
  if (orow < 0) return;
  token24_store<T>(tile, j, part, t0, p.T, orow, static_cast<T*>(p.values), p.indices, p.algo, vec_store);
}

// Output rows c whose column is also listed at a larger c' (inv[col] == c' != c) were not
// written by the main kernel: copy them (row_len values, and as many indices when given) from row c'.
template <typename T>
__global__ void duplicate_rows_kernel(const int64_t* __restrict__ columns, int64_t N, const int32_t* __restrict__ inv,
                                      T* values, uint8_t* indices, int64_t row_len) {
  const int64_t c = blockIdx.x;
  int64_t col = columns[c];
  col = col < 0 ? 0 : (col >= N ? N - 1 : col);
  const int64_t src = inv[col];
  if (src == c || src < 0) return;
  for (int64_t h = threadIdx.x; h < row_len; h += blockDim.x) {
    values[c * row_len + h] = values[src * row_len + h];
    if (indices) indices[c * row_len + h] = indices[src * row_len + h];
  }
}

// ---------------------------------------------------------------------------------------------
// Feature split from the compressed rows. A (T, F): values/indices (T, F/2).
//
//   compressed row t:  | v0 v1 | v2 v3 | ...   indices | 1 3 | 0 3 | ...
//   tile[t][4q .. 4q+3] (group q):  | 0 v0 0 v1 | v2 0 0 v3 | ...   (+0.0 at dropped positions)
template <typename T>
__global__ void __launch_bounds__(kTThreads) transposed_split_kernel(TransposedSplit24Params p,
                                                                     const int32_t* __restrict__ inv_s,
                                                                     const int32_t* __restrict__ inv_d,
                                                                     bool pair_load, bool vec_store, bool vec_dense) {
  __shared__ typename TileLayout<T>::Storage smem;  // [token][feature], tile_at
  T* const tile = smem.e;
  const int tid = threadIdx.x;
  int64_t t0, n0;  // this block's first token and first feature
  if (!transposed_tile(p.T, p.F, t0, n0)) return;  // a padding block exits as a whole
  const int64_t H = p.F / 2;
  const T* __restrict__ vals = static_cast<const T*>(p.values);

  // Load: thread = one group of 4 features of one token; 16 groups per token row, 16 rows per
  // pass, all 4 passes issued before any is used. Groups no output asks for are not read.
  constexpr int kGroupsPerRow = kTC / 4;
  constexpr int kRowsPerPass = kTThreads / kGroupsPerRow;
  constexpr int kPasses = kTT / kRowsPerPass;
  const int q = tid % kGroupsPerRow;
  const int64_t n = n0 + 4 * q;  // F % 4 == 0: the group is whole or outside
  bool wanted = n < p.F;
  if (wanted) {
    bool any = false;
#pragma unroll
    for (int e = 0; e < 4; ++e) any |= (inv_s[n + e] >= 0) | (inv_d[n + e] >= 0);
    wanted = any;
  }
  const T zero = from_f<T>(0.f);
  T v[kPasses][2];
  uint8_t ix[kPasses][2];
#pragma unroll
  for (int k = 0; k < kPasses; ++k) {
    const int64_t t = t0 + tid / kGroupsPerRow + k * kRowsPerPass;
    v[k][0] = v[k][1] = zero;
    ix[k][0] = ix[k][1] = 0;  // (0, 0): position 0 holds v[k][1] = +0.0, the rest +0.0
    if (wanted && t < p.T) {
      const int64_t off = t * H + 2 * (n / 4);
      if (pair_load) {  // 2 values (4 or 8 bytes) and 2 indices (2 bytes), aligned
        if constexpr (sizeof(T) == 2) {
          const uint32_t w = __ldg(reinterpret_cast<const unsigned int*>(vals + off));
          __builtin_memcpy(v[k], &w, 4);
        } else {
          const uint2 w = __ldg(reinterpret_cast<const uint2*>(vals + off));
          __builtin_memcpy(v[k], &w, 8);
        }
        const uint16_t wi = __ldg(reinterpret_cast<const unsigned short*>(p.indices + off));
        __builtin_memcpy(ix[k], &wi, 2);
      } else {
        v[k][0] = vals[off];
        v[k][1] = vals[off + 1];
        ix[k][0] = p.indices[off];
        ix[k][1] = p.indices[off + 1];
      }
    }
  }
#pragma unroll
  for (int k = 0; k < kPasses; ++k) {
    const int tt = tid / kGroupsPerRow + k * kRowsPerPass;
    const int i0 = ix[k][0] & 3, i1 = ix[k][1] & 3;  // as sparse24_to_dense: the second index wins
    T o[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) o[e] = e == i1 ? v[k][1] : (e == i0 ? v[k][0] : zero);
    store4(tile + tile_at<T>(tt, 4 * q), o);  // 8/16-byte aligned (TileLayout)
  }
  __syncthreads();

  // Compute + store: thread = one feature column, 16 tokens.
  const int j = tid / 4, part = tid % 4;
  const int64_t f = n0 + j;
  if (f >= p.F) return;
  const int64_t srow = inv_s[f];
  if (srow >= 0) {
    token24_store<T>(tile, j, part, t0, p.T, srow, static_cast<T*>(p.tvalues), p.tindices, p.algo, vec_store);
  }
  const int64_t drow = inv_d[f];
  if (drow < 0) return;
  const int64_t tbeg = t0 + part * 16;
  if (tbeg >= p.T) return;
  const int nt = p.T - tbeg < 16 ? static_cast<int>(p.T - tbeg) : 16;
  T* dst = static_cast<T*>(p.dense_t) + drow * p.T + tbeg;
  if (vec_dense && nt == 16) {  // T * sizeof(T) % 16 == 0: 16-byte aligned destination
    T o[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) o[i] = tile[tile_at<T>(part * 16 + i, j)];
    constexpr int kC = sizeof(T) * 16 / 16;
    uint4 w[kC];
    __builtin_memcpy(w, o, sizeof(o));
#pragma unroll
    for (int k = 0; k < kC; ++k) reinterpret_cast<uint4*>(dst)[k] = w[k];
  } else {
    for (int i = 0; i < nt; ++i) dst[i] = tile[tile_at<T>(part * 16 + i, j)];
  }
}

// ---------------------------------------------------------------------------------------------
constexpr int kThreads = 256;
inline unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;  // grid.x only: more than 2^39 elements do not fit a GPU
  if (b > kMaxGridX) throw std::runtime_error("sp24: internal error: " + std::to_string(n) + " work items exceed one launch");
  return static_cast<unsigned>(b);
}

// The dim3 of a tiled launch (sp24/grid.h); refuses only what no launch can hold.
dim3 launch_grid(const TileGrid& g, const char* op, int64_t rows, int64_t cols) {
  if (!g.fits) {
    throw std::runtime_error(std::string(op) + ": a (" + std::to_string(rows) + ", " + std::to_string(cols) +
                             ") operand needs more thread blocks than one CUDA launch holds (" +
                             std::to_string(kMaxGridX) + " x " + std::to_string(kMaxGridY) + ")");
  }
  return dim3(g.x, g.y);
}

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
    for (int s = 0; s < 2; ++s) v[s] = from_f<T>(relu2_backward(to_f(v[s]), to_f(y2[s])));
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
  store4(out, o);
}

// Row-wise e4m3 quantisation: one warp per row (8 rows per block, grid-stride over the rows). Each
// lane reduces amax over its columns, the warp combines them with shuffles (exact: a max), then
// every lane writes its e4m3 values. No shared memory and no block barrier.
constexpr int kQuantThreads = 256;
constexpr int kQuantRowsPerBlock = kQuantThreads / 32;

// The amax of the whole warp in every lane (exact: a max, in any order of the lanes).
__device__ __forceinline__ void warp_merge(E4M3RowStats& st) {
  for (int o = 16; o > 0; o >>= 1) st.merge(__shfl_xor_sync(0xffffffffu, st.amax, o));
}

template <typename T>
__global__ void __launch_bounds__(kQuantThreads) quantize_rows_e4m3_kernel(QuantizeRowsParams p) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kQuantRowsPerBlock;
  // r is the same for the 32 lanes of a warp: the shuffles below always have the full warp
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kQuantRowsPerBlock + (threadIdx.x >> 5); r < p.M; r += step) {
    const T* v = static_cast<const T*>(p.values) + r * p.n;
    E4M3RowStats st;
    for (int64_t c = lane; c < p.n; c += 32) st.add(to_f(v[c]));
    warp_merge(st);
    const float scale = e4m3_row_scale(st);
    if (lane == 0) p.scales[r] = scale;
    uint8_t* q = p.q + r * p.n;
    for (int64_t c = lane; c < p.n; c += 32) q[c] = e4m3_quantize(to_f(v[c]), scale, st.finite());
  }
}

// sparsify24_fp8 in one kernel (no counts; a row's kept values within kFusedKeptBytes): one block
// per row (grid-stride over the rows). The row is read once; its kept values wait in shared memory
// while the block reduces the row's amax, then leave as e4m3. Only the e4m3 values, the indices and
// the scale are written: the 16-bit kept values of the two-kernel chain (sparsify24, then the row
// quantisation) never reach global memory. The selection and rounding are sparsify24_rows_kernel's
// and the row rule quantize_rows_e4m3_kernel's, so the bits are the chain's (tests/emu).
constexpr int kFusedThreads = 256;
constexpr int64_t kFusedKeptBytes = 32 * 1024;  // bf16/fp16 rows up to K = 32768, fp32 up to 16384
constexpr int64_t kFusedMinK = 1024;             // shorter rows take the two-kernel chain (sparsify24_fp8_fused_pays)

template <typename T, bool kVec>
__global__ void __launch_bounds__(kFusedThreads) sparsify24_fp8_fused_kernel(Sparsify24Params p, QuantizeRowsParams q) {
  __shared__ T s_kept[kFusedKeptBytes / sizeof(T)];
  __shared__ float s_amax[kFusedThreads / 32];
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int64_t H = p.K / 2, G = p.K / 4;
  for (int64_t r = blockIdx.x; r < p.M; r += gridDim.x) {  // uniform over the block: the barriers below
    const T* __restrict__ x = static_cast<const T*>(p.x) + r * p.x_row_stride;
    uint8_t* __restrict__ idx = p.indices + r * H;
    E4M3RowStats st;
    for (int64_t g = tid; g < G; g += kFusedThreads) {
      T a[4];
      if constexpr (kVec) {  // one 8-byte (16-bit types) or 16-byte (fp32) load per group
        using V = std::conditional_t<sizeof(T) == 2, uint2, uint4>;
        const V v = __ldg(reinterpret_cast<const V*>(x + 4 * g));
        __builtin_memcpy(a, &v, sizeof a);
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) a[j] = x[4 * g + j];
      }
      float f[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        f[j] = to_f(a[j]);
        if (p.relu2) {
          a[j] = from_f<T>(relu2(f[j]));  // fp32, one rounding; selection on the rounded value
          f[j] = to_f(a[j]);
        }
      }
      uint8_t lo, hi;
      mask_to_indices(select_2of4(f[0], f[1], f[2], f[3], p.algo), lo, hi);
      T v0, v1;
      pick(a, lo, hi, v0, v1);
      s_kept[2 * g] = v0;
      s_kept[2 * g + 1] = v1;
      *reinterpret_cast<uint16_t*>(idx + 2 * g) = static_cast<uint16_t>(lo | (hi << 8));  // bytes lo, hi
      st.add(to_f(v0));
      st.add(to_f(v1));
    }
    warp_merge(st);
    if (lane == 0) s_amax[warp] = st.amax;
    __syncthreads();  // the kept values and the warps' amax are in shared memory
    E4M3RowStats row;
    for (int w = 0; w < kFusedThreads / 32; ++w) row.merge(s_amax[w]);  // exact: a max, in any order
    const float scale = e4m3_row_scale(row);
    const bool finite = row.finite();
    if (tid == 0) q.scales[r] = scale;
    uint8_t* __restrict__ qr = q.q + r * H;
    if (H % 4 == 0) {  // K % 8 == 0: 4 e4m3 values per 4-byte store (the row starts 4-byte aligned)
      for (int64_t h4 = tid; h4 < H / 4; h4 += kFusedThreads) {
        uint32_t w = 0;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          w |= static_cast<uint32_t>(e4m3_quantize(to_f(s_kept[4 * h4 + j]), scale, finite)) << (8 * j);
        }
        *reinterpret_cast<uint32_t*>(qr + 4 * h4) = w;  // little-endian: value 4*h4 + j in byte j
      }
    } else {
      for (int64_t h = tid; h < H; h += kFusedThreads) qr[h] = e4m3_quantize(to_f(s_kept[h]), scale, finite);
    }
    __syncthreads();  // the next row rewrites s_kept and s_amax
  }
}

}  // namespace

void quantize_rows_e4m3_cuda(const QuantizeRowsParams& p, void* stream) {
  if (p.M == 0) return;
  const int64_t need = (p.M + kQuantRowsPerBlock - 1) / kQuantRowsPerBlock;
  const unsigned blocks = static_cast<unsigned>(need < 65535 ? need : 65535);
  dispatch_dtype(p.dtype, [&](auto t) {
    launch_kernel(quantize_rows_e4m3_kernel<decltype(t)>, dim3(blocks), dim3(kQuantThreads), 0,
                  static_cast<cudaStream_t>(stream), p);
  });
  check_launch("sparsify24_fp8 (row quantisation)");
}

bool sparsify24_fp8_fusable(const Sparsify24Params& p) {
  const int64_t es = p.dtype == DType::kFloat32 ? 4 : 2;
  return p.counts == nullptr && p.cslt_meta == nullptr && p.K / 2 * es <= kFusedKeptBytes;
}

bool sparsify24_fp8_fused_pays(const Sparsify24Params& p) {
  // A block of 256 threads per row leaves most threads idle on short rows, with 6 rows in flight per
  // SM (the 32 KiB of shared memory): there the chain's 64-row tiles should be faster (estimated from
  // the code, not measured: the GPU check's fp8 benchmark measures the long rows)
  return sparsify24_fp8_fusable(p) && p.K >= kFusedMinK;
}

void sparsify24_fp8_fused_cuda(const Sparsify24Params& p, const QuantizeRowsParams& q, void* stream) {
  if (!sparsify24_fp8_fusable(p)) throw std::runtime_error("sp24: sparsify24_fp8_fused_cuda called on a case it does not take");
  if (p.M == 0) return;
  const int64_t es = p.dtype == DType::kFloat32 ? 4 : 2;
  // a group of 4 as one vector load: the row starts and the row stride keep 4 * es alignment
  const bool vec = (reinterpret_cast<uintptr_t>(p.x) % (4 * es)) == 0 && (p.x_row_stride * es) % (4 * es) == 0;
  const int64_t cap = q.max_blocks < 1 ? 1 : (q.max_blocks > 65535 ? 65535 : q.max_blocks);
  const unsigned blocks = static_cast<unsigned>(p.M < cap ? p.M : cap);
  dispatch_dtype(p.dtype, [&](auto t) {
    using T = decltype(t);
    if (vec) {
      launch_kernel(sparsify24_fp8_fused_kernel<T, true>, dim3(blocks), dim3(kFusedThreads), 0,
                    static_cast<cudaStream_t>(stream), p, q);
    } else {
      launch_kernel(sparsify24_fp8_fused_kernel<T, false>, dim3(blocks), dim3(kFusedThreads), 0,
                    static_cast<cudaStream_t>(stream), p, q);
    }
  });
  check_launch("sparsify24_fp8 (fused)");
}

bool sparsify24_cuda_vectorised(const Sparsify24Params& p) {
  const int64_t es = p.dtype == DType::kFloat32 ? 4 : 2;
  return p.K % 8 == 0 && aligned16(p.x) && (p.x_row_stride * es) % 16 == 0;
}

void sparsify24_cuda(const Sparsify24Params& p, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  const bool vec = sparsify24_cuda_vectorised(p);
  if (p.cslt_meta != nullptr && (!vec || p.dtype == DType::kFloat32 || !cslt_layout_domain(p.M, p.K))) {
    throw std::runtime_error("sp24.sparsify24_cslt: internal error: the fused cuSPARSELt writer needs the vectorised "
                             "16-bit path and M % 64 == 0, K % 32 == 0");
  }
  dispatch_dtype(p.dtype, [&](auto t) {
    using T = decltype(t);
    const dim3 block(kRowTx, kRowTy);
    const dim3 grid = launch_grid(sparsify24_grid(p.M, p.K), "sp24.sparsify24", p.M, p.K);
    if (vec) {
      launch_kernel(sparsify24_rows_kernel<T, true>, grid, block, 0, s, p);
    } else {
      launch_kernel(sparsify24_rows_kernel<T, false>, grid, block, 0, s, p);
    }
  });
  check_launch("sparsify24");
}

namespace {
// inv[col] for columns (C of them) into a pre-filled (-1) inv of N entries.
void launch_inverse_columns(const int64_t* columns, int64_t C, int64_t N, int32_t* inv, cudaStream_t s,
                            const char* what) {
  if (C == 0) return;  // a launch of 0 blocks is an error
  // the clamp into [0, N) needs N > 0; the glue refuses ids over an empty axis on every path
  if (N <= 0) throw std::runtime_error(std::string("sp24: internal error: ") + what + ": column ids over an empty axis");
  launch_kernel(inverse_columns_kernel, blocks_for(C), kThreads, 0, s, columns, C, N, inv);
  check_launch(what);
}
}  // namespace

void sparsify24_transposed_cuda(const Sparsify24TransposedParams& p, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  int32_t* inv = nullptr;
  if (p.columns) {
    if (p.workspace == nullptr) throw std::runtime_error("sp24.sparsify24_transposed: internal error: no workspace for the column map");
    inv = p.workspace;
    if (cudaMemsetAsync(inv, 0xff, p.N * sizeof(int32_t), s) != cudaSuccess) check_launch("sparsify24_transposed (memset)");
    launch_inverse_columns(p.columns, p.C, p.N, inv, s, "sparsify24_transposed (column map)");
  }
  dispatch_dtype(p.dtype, [&](auto t) {
    using T = decltype(t);
    constexpr int E = 16 / sizeof(T);
    const bool vec_load = p.N % E == 0 && aligned16(p.x) && (p.x_row_stride * static_cast<int64_t>(sizeof(T))) % 16 == 0;
    const bool vec_store = (p.T / 2 * static_cast<int64_t>(sizeof(T))) % 16 == 0 && (p.T / 2) % 8 == 0;
    const dim3 grid = launch_grid(transposed_grid(p.T, p.N), "sp24.sparsify24_transposed", p.T, p.N);
    launch_kernel(sparsify24_transposed_kernel<T>, grid, kTThreads, 0, s, p, inv, vec_load, vec_store);
    check_launch("sparsify24_transposed");
    if (p.columns) {
      launch_kernel(duplicate_rows_kernel<T>, static_cast<unsigned>(p.C), 128, 0, s,
          p.columns, p.N, inv, static_cast<T*>(p.values), p.indices, p.T / 2);
      check_launch("sparsify24_transposed (duplicate columns)");
    }
  });
}

void transposed_split24_cuda(const TransposedSplit24Params& p, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  if (p.workspace == nullptr) throw std::runtime_error("sp24.sparse24_transposed_split: internal error: no workspace for the column maps");
  int32_t* inv_s = p.workspace;
  int32_t* inv_d = p.workspace + p.F;
  if (cudaMemsetAsync(p.workspace, 0xff, 2 * p.F * sizeof(int32_t), s) != cudaSuccess) check_launch("sparse24_transposed_split (memset)");
  launch_inverse_columns(p.sparse_cols, p.Cs, p.F, inv_s, s, "sparse24_transposed_split (sparse column map)");
  launch_inverse_columns(p.dense_cols, p.Cd, p.F, inv_d, s, "sparse24_transposed_split (dense column map)");
  dispatch_dtype(p.dtype, [&](auto t) {
    using T = decltype(t);
    const bool pair_load = (reinterpret_cast<uintptr_t>(p.values) % (2 * sizeof(T))) == 0 &&
                           (reinterpret_cast<uintptr_t>(p.indices) % 2) == 0;  // F/2 is even: every row keeps it
    const bool vec_store = (p.T / 2 * static_cast<int64_t>(sizeof(T))) % 16 == 0 && (p.T / 2) % 8 == 0 &&
                           aligned16(p.tvalues) && (reinterpret_cast<uintptr_t>(p.tindices) & 7u) == 0;
    const bool vec_dense = (p.T * static_cast<int64_t>(sizeof(T))) % 16 == 0 && aligned16(p.dense_t);
    const dim3 grid = launch_grid(transposed_grid(p.T, p.F), "sp24.sparse24_transposed_split", p.T, p.F);
    launch_kernel(transposed_split_kernel<T>, grid, kTThreads, 0, s, p, inv_s, inv_d, pair_load, vec_store, vec_dense);
    check_launch("sparse24_transposed_split");
    if (p.Cs > 0) {
      launch_kernel(duplicate_rows_kernel<T>, static_cast<unsigned>(p.Cs), 128, 0, s,
          p.sparse_cols, p.F, inv_s, static_cast<T*>(p.tvalues), p.tindices, p.T / 2);
      check_launch("sparse24_transposed_split (duplicate sparse columns)");
    }
    if (p.Cd > 0) {
      launch_kernel(duplicate_rows_kernel<T>, static_cast<unsigned>(p.Cd), 128, 0, s,
          p.dense_cols, p.F, inv_d, static_cast<T*>(p.dense_t), nullptr, p.T);
      check_launch("sparse24_transposed_split (duplicate dense columns)");
    }
  });
}

void apply24_cuda(const Apply24Params& p, void* stream) {
  dispatch_dtype(p.dtype, [&](auto t) {
    launch_kernel(apply24_kernel<decltype(t)>, blocks_for(p.M * (p.K / 4)), kThreads, 0, static_cast<cudaStream_t>(stream), p);
  });
  check_launch("sparse24_apply");
}

void to_dense24_cuda(const ToDense24Params& p, void* stream) {
  dispatch_dtype(p.dtype, [&](auto t) {
    launch_kernel(to_dense24_kernel<decltype(t)>, blocks_for(p.M * (p.K / 4)), kThreads, 0, static_cast<cudaStream_t>(stream), p);
  });
  check_launch("sparse24_to_dense");
}

__global__ void __launch_bounds__(kThreads) cslt_meta24_kernel(const uint8_t* __restrict__ indices,
                                                               uint8_t* __restrict__ meta, int64_t K, int64_t n) {
  for (int64_t off = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; off < n; off += int64_t(gridDim.x) * blockDim.x) {
    meta[off] = cslt_meta_byte(indices, K, off);
  }
}

void cslt_meta24_cuda(const uint8_t* indices, uint8_t* meta, int64_t M, int64_t K, void* stream) {
  const int64_t n = M * K / 8;
  if (n == 0) return;
  launch_kernel(cslt_meta24_kernel, blocks_for(n), kThreads, 0, static_cast<cudaStream_t>(stream), indices, meta, K, n);
  check_launch("sparse24_cslt_compress (metadata)");
}

}  // namespace sp24

