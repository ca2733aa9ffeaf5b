// Plain C entry points over the emulated CUDA kernels (csrc/cuda/sparse24_cuda.cu compiled as host
// C++ against csrc/emu/cuda_emu.h). Torch-free: tests/emu loads the library with ctypes, passes
// pointers to CPU tensors and compares the results with torch.ops.sp24 (CPU) and sp24.reference.
// Each function returns 0, or 1 with the error text in `err` (the same text the CUDA op raises).
// A TEST TOOL: nothing in the sp24 package links or loads it.
#include <cstdint>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>

#include "cuda/launch.cuh"
#include "sp24/params.h"

namespace {

int fail(char* err, int64_t len, const std::string& msg) {
  if (err != nullptr && len > 0) {
    std::strncpy(err, msg.c_str(), static_cast<size_t>(len - 1));
    err[len - 1] = '\0';
  }
  return 1;
}

template <typename F>
int guarded(char* err, int64_t len, F&& f) {
  try {
    f();
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return fail(err, len, std::string("unchecked CUDA error: ") + cudaGetErrorString(e));
    return 0;
  } catch (const std::exception& e) {
    return fail(err, len, e.what());
  }
}

sp24::DType dtype_of(int d) { return static_cast<sp24::DType>(d); }

// Self-test kernels: the launch limits, atomics, and that a misaligned vector load is caught.
__global__ void count_kernel(int* counter, int* max_tid) {
  const unsigned blk = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned thr = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int tid = static_cast<int>(blk * (blockDim.x * blockDim.y * blockDim.z) + thr);
  atomicAdd(counter, 1);
  atomicMax(max_tid, tid);
}

__global__ void misaligned_load_kernel(const unsigned char* base, unsigned* out) {
  const uint4 v = __ldg(reinterpret_cast<const uint4*>(base + 4));  // 4 bytes past a 16-byte boundary
  *out = v.x;
}

__global__ void barrier_shuffle_kernel(int* out) {
  // thread t writes its id to shared memory; after the barrier it reads its neighbour's slot, then
  // exchanges with lane ^ 1 through a shuffle: out[t] = ((t + 1) % n) ^ 1-partner's neighbour.
  __shared__ int s[1024];
  const int n = static_cast<int>(blockDim.x), t = static_cast<int>(threadIdx.x);
  s[t] = t;
  __syncthreads();
  const int mine = s[(t + 1) % n];
  out[blockIdx.x * n + t] = __shfl_xor_sync(0xffffffffu, mine, 1);
}

// The fields of a row-wise sparsify that every entry below sets (values, counts, metadata: theirs).
sp24::Sparsify24Params sparsify_params(const void* x, int64_t row_stride, uint8_t* indices, int64_t M, int64_t K,
                                       int algo, int relu2, int dtype) {
  sp24::Sparsify24Params p;
  p.x = x;
  p.x_row_stride = row_stride;
  p.indices = indices;
  p.M = M;
  p.K = K;
  p.algo = algo;
  p.relu2 = relu2 != 0;
  p.dtype = dtype_of(dtype);
  return p;
}

}  // namespace

extern "C" {

int sp24emu_sanitized() {
#if defined(__SANITIZE_ADDRESS__)
  return 1;
#else
  return 0;
#endif
}

int sp24emu_sparsify24(const void* x, int64_t row_stride, void* values, uint8_t* indices, int32_t* counts, int64_t M,
                       int64_t K, int algo, int relu2, int dtype, uint8_t* cslt_meta, char* err, int64_t errlen) {
  sp24::Sparsify24Params p = sparsify_params(x, row_stride, indices, M, K, algo, relu2, dtype);
  p.values = values;
  p.counts = counts;
  p.cslt_meta = cslt_meta;
  return guarded(err, errlen, [&] { sp24::sparsify24_cuda(p, nullptr); });
}

int sp24emu_sparsify24_vectorised(const void* x, int64_t row_stride, int64_t M, int64_t K, int dtype) {
  const sp24::Sparsify24Params p = sparsify_params(x, row_stride, nullptr, M, K, 0, 0, dtype);
  return sp24::sparsify24_cuda_vectorised(p) ? 1 : 0;
}

int sp24emu_sparsify24_transposed(const void* x, int64_t row_stride, const int64_t* columns, void* values,
                                  uint8_t* indices, int64_t T, int64_t N, int64_t C, int algo, int dtype,
                                  int32_t* workspace, char* err, int64_t errlen) {
  sp24::Sparsify24TransposedParams p;
  p.x = x;
  p.x_row_stride = row_stride;
  p.columns = columns;
  p.values = values;
  p.indices = indices;
  p.T = T;
  p.N = N;
  p.C = C;
  p.algo = algo;
  p.dtype = dtype_of(dtype);
  p.workspace = workspace;
  return guarded(err, errlen, [&] { sp24::sparsify24_transposed_cuda(p, nullptr); });
}

int sp24emu_transposed_split(const void* values, const uint8_t* indices, const int64_t* sparse_cols,
                             const int64_t* dense_cols, void* tvalues, uint8_t* tindices, void* dense_t, int64_t T,
                             int64_t F, int64_t Cs, int64_t Cd, int algo, int dtype, int32_t* workspace, char* err,
                             int64_t errlen) {
  sp24::TransposedSplit24Params p;
  p.values = values;
  p.indices = indices;
  p.sparse_cols = sparse_cols;
  p.dense_cols = dense_cols;
  p.tvalues = tvalues;
  p.tindices = tindices;
  p.dense_t = dense_t;
  p.T = T;
  p.F = F;
  p.Cs = Cs;
  p.Cd = Cd;
  p.algo = algo;
  p.dtype = dtype_of(dtype);
  p.workspace = workspace;
  return guarded(err, errlen, [&] { sp24::transposed_split24_cuda(p, nullptr); });
}

int sp24emu_apply(const void* x, int64_t row_stride, const void* y2_values, const uint8_t* indices, void* values,
                  int64_t M, int64_t K, int dtype, char* err, int64_t errlen) {
  sp24::Apply24Params p;
  p.x = x;
  p.x_row_stride = row_stride;
  p.y2_values = y2_values;
  p.indices = indices;
  p.values = values;
  p.M = M;
  p.K = K;
  p.relu2_backward = y2_values != nullptr;
  p.dtype = dtype_of(dtype);
  return guarded(err, errlen, [&] { sp24::apply24_cuda(p, nullptr); });
}

int sp24emu_to_dense(const void* values, const uint8_t* indices, void* out, int64_t M, int64_t K, int dtype, char* err,
                     int64_t errlen) {
  sp24::ToDense24Params p;
  p.values = values;
  p.indices = indices;
  p.out = out;
  p.M = M;
  p.K = K;
  p.dtype = dtype_of(dtype);
  return guarded(err, errlen, [&] { sp24::to_dense24_cuda(p, nullptr); });
}

int sp24emu_quantize_rows(const void* values, uint8_t* q, float* scales, int64_t M, int64_t n, int dtype, char* err,
                          int64_t errlen) {
  sp24::QuantizeRowsParams p;
  p.values = values;
  p.q = q;
  p.scales = scales;
  p.M = M;
  p.n = n;
  p.dtype = dtype_of(dtype);
  return guarded(err, errlen, [&] { sp24::quantize_rows_e4m3_cuda(p, nullptr); });
}

int sp24emu_sparsify24_fp8_fused(const void* x, int64_t row_stride, uint8_t* q, uint8_t* indices, float* scales,
                                 int64_t M, int64_t K, int algo, int relu2, int dtype, int64_t max_blocks, char* err,
                                 int64_t errlen) {
  const sp24::Sparsify24Params p = sparsify_params(x, row_stride, indices, M, K, algo, relu2, dtype);
  sp24::QuantizeRowsParams qp;
  qp.q = q;
  qp.scales = scales;
  qp.M = M;
  qp.n = K / 2;
  qp.dtype = p.dtype;
  qp.max_blocks = max_blocks;
  if (!sp24::sparsify24_fp8_fusable(p)) return 2;  // the glue takes the two-kernel chain there
  return guarded(err, errlen, [&] { sp24::sparsify24_fp8_fused_cuda(p, qp, nullptr); });
}

int sp24emu_cslt_meta(const uint8_t* indices, uint8_t* meta, int64_t M, int64_t K, char* err, int64_t errlen) {
  return guarded(err, errlen, [&] { sp24::cslt_meta24_cuda(indices, meta, M, K, nullptr); });
}

// Launches count_kernel on grid (gx, gy=1) x block (bx, by): counter = threads run, max_tid = the
// largest linear thread id seen. Returns 1 with the launch error for a configuration over the limits.
int sp24emu_selftest_launch(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, int* counter,
                            int* max_tid, char* err, int64_t errlen) {
  return guarded(err, errlen, [&] {
    sp24::launch_kernel(count_kernel, dim3(gx, gy, gz), dim3(bx, by, bz), 0, nullptr, counter, max_tid);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) throw std::runtime_error(cudaGetErrorString(e));
  });
}

int sp24emu_selftest_barrier_shuffle(unsigned blocks, unsigned threads, int* out, char* err, int64_t errlen) {
  return guarded(err, errlen, [&] { sp24::launch_kernel(barrier_shuffle_kernel, blocks, threads, 0, nullptr, out); });
}

// A misaligned 16-byte load: under UBSan this must abort the process (the lane checks it does).
int sp24emu_selftest_misaligned(const unsigned char* base16, unsigned* out) {
  sp24::launch_kernel(misaligned_load_kernel, 1, 1, 0, nullptr, base16, out);
  return 0;
}

// The emulated conversions, element-wise over n values (tests compare them with torch's).
void sp24emu_f32_to_f16(const float* in, uint16_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = __float2half_rn(in[i]).__x;
}
void sp24emu_f32_to_bf16(const float* in, uint16_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = __float2bfloat16_rn(in[i]).__x;
}
void sp24emu_f16_to_f32(const uint16_t* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = __half2float(__half{in[i]});
}
void sp24emu_bf16_to_f32(const uint16_t* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = __bfloat162float(__nv_bfloat16{in[i]});
}

// Emulator counters: launches, blocks, threads, barrier releases, warp-shuffle releases, OS threads
// of the pool, launches refused for their configuration.
void sp24emu_stats(int64_t* out7) {
  const auto s = sp24_emu::stats();
  const int64_t v[7] = {s.launches, s.blocks, s.threads, s.barriers, s.shuffles, s.workers, s.rejected};
  std::memcpy(out7, v, sizeof(v));
}

// Schedule order of the threads of a block: -1 rotate (default), 0 forward, 1 reverse, 2 shuffled.
void sp24emu_set_order(int mode) { sp24_emu::set_order(mode); }

}  // extern "C"
