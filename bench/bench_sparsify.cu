// bench_sparsify: sp24's sparsify CUDA kernels (csrc/cuda/sparse24_cuda.cu, compiled into this
// binary through their Params-struct launchers in csrc/sp24/params.h) standalone, against a
// device-to-device copy of x (the bandwidth limit; what x.clone() does).
//
// One JSON line per kernel: median/p10/p90 us (CUDA events, L2 flushed before each run), bytes
// moved, GB/s and the ratio to the copy. Targets (docs/DESIGN.md): relu2 + sparsify24 <= 1.2x copy,
// sparsify-transpose with the 95/5 feature split <= 1.5x copy (H100, bf16, 16384 x 16384).
#include <numeric>
#include <random>

#include "bench_util.h"
#include "sp24/params.h"

using namespace sp24bench;

static const char* kUsage =
    "bench_sparsify [--shape M,K] [--dtype bf16|fp16] [--reps N] [--warmup N] [--out FILE|-]\n"
    "  default shape 16384,16384 (T tokens x F features)";

template <typename T>
__global__ void relu2_kernel(const T* x, T* y, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const float v = fmaxf(static_cast<float>(x[i]), 0.f);
    y[i] = static_cast<T>(v * v);
  }
}

template <typename T>
static void run(long long M, long long K, const char* dtname, sp24::DType dt, Timer& timer, cudaStream_t s,
                JsonLines& out) {
  const long long C = K - std::llround(0.05 * K);  // the 95% sparsest features
  const long long es = static_cast<long long>(sizeof(T));
  T *x, *y2, *xc, *vals;
  uint8_t* idx;
  int32_t *counts, *ws;
  int64_t* cols;
  SP24B_CUDA(cudaMalloc(&x, es * M * K));
  SP24B_CUDA(cudaMalloc(&y2, es * M * K));
  SP24B_CUDA(cudaMalloc(&xc, es * M * K));
  SP24B_CUDA(cudaMalloc(&vals, es * M * K / 2));
  SP24B_CUDA(cudaMalloc(&idx, M * K / 2));
  SP24B_CUDA(cudaMalloc(&counts, sizeof(int32_t) * K));
  SP24B_CUDA(cudaMalloc(&ws, sizeof(int32_t) * K));
  SP24B_CUDA(cudaMalloc(&cols, sizeof(int64_t) * C));
  fill(x, M * K, 3, 2.0f, s);
  relu2_kernel<T><<<1024, 256, 0, s>>>(x, y2, M * K);
  SP24B_CUDA(cudaGetLastError());
  std::vector<int64_t> perm(K);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937_64(24));
  SP24B_CUDA(cudaMemcpy(cols, perm.data(), sizeof(int64_t) * C, cudaMemcpyHostToDevice));

  sp24::Sparsify24Params sp;
  sp.x = x;
  sp.x_row_stride = K;
  sp.values = vals;
  sp.indices = idx;
  sp.M = M;
  sp.K = K;
  sp.algo = 0;  // "largest"
  sp.relu2 = true;
  sp.dtype = dt;
  sp24::Sparsify24Params spc = sp;
  spc.counts = counts;
  sp24::Sparsify24TransposedParams tp;
  tp.x = y2;
  tp.x_row_stride = K;
  tp.values = vals;
  tp.indices = idx;
  tp.T = M;
  tp.N = K;
  tp.C = K;
  tp.algo = 1;  // "largest_abs"
  tp.dtype = dt;
  sp24::Sparsify24TransposedParams tpc = tp;
  tpc.columns = cols;
  tpc.C = C;
  tpc.workspace = ws;

  struct Kernel {
    const char* name;
    long long bytes, columns;
    std::function<void()> fn;
  };
  const long long out24 = M * K / 2 * (es + 1);
  std::vector<Kernel> kernels = {
      {"clone", 2LL * M * K * es, K, [&] { SP24B_CUDA(cudaMemcpyAsync(xc, x, es * M * K, cudaMemcpyDeviceToDevice, s)); }},
      {"sparsify24_relu2", M * K * (long long)es + out24, K, [&] { sp24::sparsify24_cuda(sp, s); }},
      // The op zero-fills the counts itself (torch.zeros in the glue): timed here too.
      {"sparsify24_relu2_counts", M * K * (long long)es + out24 + 4 * K, K,
       [&] { SP24B_CUDA(cudaMemsetAsync(counts, 0, sizeof(int32_t) * K, s)); sp24::sparsify24_cuda(spc, s); }},
      {"sparsify24_transposed", M * K * (long long)es + out24, K, [&] { sp24::sparsify24_transposed_cuda(tp, s); }},
      {"sparsify24_transposed_cols95", M * C * (long long)es + C * M / 2 * (long long)(es + 1) + 8 * C, C,
       [&] { sp24::sparsify24_transposed_cuda(tpc, s); }},
  };
  double clone_us = 0;
  for (const Kernel& k : kernels) {
    const Stats st = timer.run(k.fn);
    if (std::string(k.name) == "clone") clone_us = st.median_us;
    out.kv("name", k.name).kv("M", M).kv("K", K).kv("columns", k.columns).kv("dtype", dtname).kv("bytes", k.bytes);
    out.stats(st);
    out.kv("gbps", k.bytes / (st.median_us * 1e-6) / 1e9).kv("ratio_to_clone", st.median_us / clone_us)
        .kv("gpu", gpu_name());
    out.end();
  }
  for (void* p : {(void*)x, (void*)y2, (void*)xc, (void*)vals, (void*)idx, (void*)counts, (void*)ws, (void*)cols})
    cudaFree(p);
}

int main(int argc, char** argv) {
  Args args(argc, argv, {{"shape", "16384,16384"}, {"dtype", "bf16"}, {"reps", "50"}, {"warmup", "10"}, {"out", "-"}},
            kUsage);
  const auto shape = args.list("shape");
  if (shape.size() != 2 || shape[0] % 4 || shape[1] % 4) {
    std::fprintf(stderr, "--shape must be M,K with both multiples of 4 (2:4 along both), got '%s'\n",
                 args.str("shape").c_str());
    return 2;
  }
  const std::string dtname = args.dtype();
  try {
    JsonLines out(args.str("out"));
    cudaStream_t s;
    SP24B_CUDA(cudaStreamCreate(&s));
    Timer timer((int)args.num("warmup"), (int)args.num("reps"), s);
    if (dtname == "bf16")
      run<__nv_bfloat16>(shape[0], shape[1], "bf16", sp24::DType::kBFloat16, timer, s, out);
    else
      run<__half>(shape[0], shape[1], "fp16", sp24::DType::kFloat16, timer, s, out);
    cudaStreamDestroy(s);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_sparsify: %s\n", e.what());
    return 1;
  }
  return 0;
}
