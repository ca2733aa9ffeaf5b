// CUDA kernels for the sp24 ops. Torch-free: they take a Params struct and a stream.
// This first version favours obvious correctness (one thread per 4-group, the same selection
// function as the CPU, sp24/select.h); issue #3 replaces the hot ones with bandwidth-bound kernels.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdio>
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

constexpr int kThreads = 256;
inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

template <typename T>
__global__ void sparsify24_kernel(Sparsify24Params p) {
  const int64_t G = p.K / 4;
  const int64_t gid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (gid >= p.M * G) return;
  const int64_t r = gid / G, g = gid % G;
  const T* xr = static_cast<const T*>(p.x) + r * p.x_row_stride + 4 * g;
  T a[4];
  float f[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    a[i] = xr[i];
    f[i] = to_f(a[i]);
    if (p.relu2) {
      a[i] = from_f<T>(relu2(f[i]));
      f[i] = to_f(a[i]);
    }
    if (p.counts && f[i] != 0.f) atomicAdd(p.counts + 4 * g + i, 1);
  }
  uint8_t lo, hi;
  mask_to_indices(select_2of4(f[0], f[1], f[2], f[3], p.algo), lo, hi);
  T* v = static_cast<T*>(p.values) + r * (p.K / 2) + 2 * g;
  uint8_t* ix = p.indices + r * (p.K / 2) + 2 * g;
  v[0] = lo == 0 ? a[0] : lo == 1 ? a[1] : a[2];
  v[1] = hi == 3 ? a[3] : hi == 2 ? a[2] : a[1];
  ix[0] = lo;
  ix[1] = hi;
}

template <typename T>
__global__ void sparsify24_transposed_kernel(Sparsify24TransposedParams p) {
  // Consecutive threads take consecutive output rows (columns of x) so that reads of one x row
  // are coalesced when no column subset is given.
  const int64_t G = p.T / 4;
  const int64_t gid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (gid >= p.C * G) return;
  const int64_t c = gid % p.C, g = gid / p.C;
  int64_t col = p.columns ? p.columns[c] : c;
  col = col < 0 ? 0 : (col >= p.N ? p.N - 1 : col);  // never read outside x (host checks the range)
  const T* x = static_cast<const T*>(p.x);
  T a[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) a[i] = x[(4 * g + i) * p.x_row_stride + col];
  uint8_t lo, hi;
  mask_to_indices(select_2of4(to_f(a[0]), to_f(a[1]), to_f(a[2]), to_f(a[3]), p.algo), lo, hi);
  T* v = static_cast<T*>(p.values) + c * (p.T / 2) + 2 * g;
  uint8_t* ix = p.indices + c * (p.T / 2) + 2 * g;
  v[0] = lo == 0 ? a[0] : lo == 1 ? a[1] : a[2];
  v[1] = hi == 3 ? a[3] : hi == 2 ? a[2] : a[1];
  ix[0] = lo;
  ix[1] = hi;
}

template <typename T>
__global__ void apply24_kernel(Apply24Params p) {
  const int64_t H = p.K / 2;
  const int64_t gid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (gid >= p.M * H) return;
  const int64_t r = gid / H, h = gid % H;
  const int64_t col = 4 * (h / 2) + (p.indices[gid] & 3);
  const T xv = static_cast<const T*>(p.x)[r * p.x_row_stride + col];
  T* out = static_cast<T*>(p.values);
  if (p.relu2_backward) {
    const float d = 2.f * sqrtf(to_f(static_cast<const T*>(p.y2_values)[gid]));
    out[gid] = from_f<T>(to_f(xv) * d);
  } else {
    out[gid] = xv;
  }
}

template <typename T>
__global__ void to_dense24_kernel(ToDense24Params p) {
  // One thread per group of 4 outputs: writes every output element exactly once.
  const int64_t G = p.K / 4;
  const int64_t gid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (gid >= p.M * G) return;
  const T* v = static_cast<const T*>(p.values) + 2 * gid;
  const uint8_t* ix = p.indices + 2 * gid;
  T o[4] = {from_f<T>(0.f), from_f<T>(0.f), from_f<T>(0.f), from_f<T>(0.f)};
  o[ix[0] & 3] = v[0];
  o[ix[1] & 3] = v[1];
  T* out = static_cast<T*>(p.out) + 4 * gid;
#pragma unroll
  for (int i = 0; i < 4; ++i) out[i] = o[i];
}

}  // namespace

void sparsify24_cuda(const Sparsify24Params& p, void* stream) {
  dispatch_dtype(p.dtype, [&](auto t) {
    sparsify24_kernel<decltype(t)><<<blocks_for(p.M * (p.K / 4)), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  });
  check_launch("sparsify24");
}

void sparsify24_transposed_cuda(const Sparsify24TransposedParams& p, void* stream) {
  dispatch_dtype(p.dtype, [&](auto t) {
    sparsify24_transposed_kernel<decltype(t)>
        <<<blocks_for(p.C * (p.T / 4)), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  });
  check_launch("sparsify24_transposed");
}

void apply24_cuda(const Apply24Params& p, void* stream) {
  dispatch_dtype(p.dtype, [&](auto t) {
    apply24_kernel<decltype(t)><<<blocks_for(p.M * (p.K / 2)), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
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
