// bench_gemm: the FFN's 2:4 GEMM Y3 (T, d) = Y2 (T, F) @ W2^T (F, d), Y2 2:4 along F, through
// cuSPARSELt directly (prune with cusparseLtSpMMAPrune, compress, matmul) against cuBLAS dense
// (cublasGemmEx) on the same pruned operand. No torch: this is the ceiling the sp24 ops aim at.
//
// One JSON line per (library, d, F, T): median/p10/p90 us (CUDA events, L2 flushed before each
// run), TFLOP/s of the dense-equivalent 2*T*F*d, and the speed-up of cuSPARSELt over cuBLAS.
#include <cublas_v2.h>
#include <cusparseLt.h>

#include "bench_util.h"

using namespace sp24bench;

#define SP24B_CSLT(expr)                                                                           \
  do {                                                                                             \
    cusparseStatus_t s_ = (expr);                                                                  \
    if (s_ != CUSPARSE_STATUS_SUCCESS)                                                             \
      throw std::runtime_error(std::string(#expr) + " failed: " + cusparseLtGetErrorString(s_));  \
  } while (0)
#define SP24B_CUBLAS(expr)                                                                         \
  do {                                                                                             \
    cublasStatus_t s_ = (expr);                                                                    \
    if (s_ != CUBLAS_STATUS_SUCCESS)                                                               \
      throw std::runtime_error(std::string(#expr) + " failed: status " + std::to_string((int)s_)); \
  } while (0)

static const char* kUsage =
    "bench_gemm [--shapes d:F,...] [--tokens T,...] [--dtype bf16|fp16] [--reps N] [--warmup N]\n"
    "           [--search 0|1] [--out FILE|-]\n"
    "  default shapes: 4096:21504 (Llama-3-8B-like), 8192:43008 (70B-like), 4096:16384 (docs/DESIGN.md)\n"
    "  default tokens: 128,256,...,65536";

struct Shape {
  long long d, F;
};

static std::vector<Shape> parse_shapes(const std::string& s) {
  std::vector<Shape> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const auto c = item.find(':');
    if (c == std::string::npos) {
      std::fprintf(stderr, "--shapes: items must be d:F, got '%s'\n", item.c_str());
      std::exit(2);
    }
    out.push_back({Args::parse_int(item.substr(0, c), "shapes"), Args::parse_int(item.substr(c + 1), "shapes")});
  }
  return out;
}

template <typename T>
static void run_case(long long Tk, long long d, long long F, const char* dtname, cudaDataType dt, Timer& timer,
                     cusparseLtHandle_t& lt, cublasHandle_t blas, cudaStream_t stream, bool search, JsonLines& out) {
  const double flops = 2.0 * Tk * F * d;
  T *dA = nullptr, *dB = nullptr, *dC = nullptr, *dAc = nullptr;
  void *ws = nullptr, *cbuf = nullptr;
  SP24B_CUDA(cudaMalloc(&dA, sizeof(T) * Tk * F));
  SP24B_CUDA(cudaMalloc(&dB, sizeof(T) * F * d));
  SP24B_CUDA(cudaMalloc(&dC, sizeof(T) * Tk * d));
  fill(dA, Tk * F, 1, 1.0f, stream);
  fill(dB, F * d, 2, 1.0f / std::sqrt(static_cast<float>(F)), stream);

  cusparseLtMatDescriptor_t matA, matB, matC;
  cusparseLtMatmulDescriptor_t mm;
  cusparseLtMatmulAlgSelection_t sel;
  cusparseLtMatmulPlan_t plan;
  const auto row = CUSPARSE_ORDER_ROW;
  const auto nn = CUSPARSE_OPERATION_NON_TRANSPOSE;
  SP24B_CSLT(cusparseLtStructuredDescriptorInit(&lt, &matA, Tk, F, F, 16, dt, row, CUSPARSELT_SPARSITY_50_PERCENT));
  SP24B_CSLT(cusparseLtDenseDescriptorInit(&lt, &matB, F, d, d, 16, dt, row));
  SP24B_CSLT(cusparseLtDenseDescriptorInit(&lt, &matC, Tk, d, d, 16, dt, row));
  SP24B_CSLT(cusparseLtMatmulDescriptorInit(&lt, &mm, nn, nn, &matA, &matB, &matC, &matC, CUSPARSE_COMPUTE_32F));
  SP24B_CSLT(cusparseLtMatmulAlgSelectionInit(&lt, &sel, &mm, CUSPARSELT_MATMUL_ALG_DEFAULT));
  SP24B_CSLT(cusparseLtMatmulPlanInit(&lt, &plan, &mm, &sel));
  // Prune A in place (2 of every 4 along F); cuBLAS then multiplies the very same values.
  SP24B_CSLT(cusparseLtSpMMAPrune(&lt, &mm, dA, dA, CUSPARSELT_PRUNE_SPMMA_TILE, stream));
  size_t csize = 0, cbufsize = 0, wsize = 0;
  SP24B_CSLT(cusparseLtSpMMACompressedSize(&lt, &plan, &csize, &cbufsize));
  SP24B_CUDA(cudaMalloc(reinterpret_cast<void**>(&dAc), csize));
  if (cbufsize) SP24B_CUDA(cudaMalloc(&cbuf, cbufsize));
  SP24B_CSLT(cusparseLtSpMMACompress(&lt, &plan, dA, dAc, cbuf, stream));
  float alpha = 1.f, beta = 0.f;
  if (search) {  // picks an algorithm id by timing; without it the default id runs
    SP24B_CSLT(cusparseLtMatmulGetWorkspace(&lt, &plan, &wsize));
    if (wsize) SP24B_CUDA(cudaMalloc(&ws, wsize));
    SP24B_CSLT(cusparseLtMatmulSearch(&lt, &plan, &alpha, dAc, dB, &beta, dC, dC, ws, &stream, 1));
    cudaFree(ws);
    ws = nullptr;
  }
  SP24B_CSLT(cusparseLtMatmulGetWorkspace(&lt, &plan, &wsize));
  if (wsize) SP24B_CUDA(cudaMalloc(&ws, wsize));

  const Stats sparse = timer.run([&] {
    SP24B_CSLT(cusparseLtMatmul(&lt, &plan, &alpha, dAc, dB, &beta, dC, dC, ws, &stream, 1));
  });
  // Row-major C (T, d) = A (T, F) B (F, d) is column-major C^T (d, T) = B^T (d, F) A^T (F, T).
  const Stats dense = timer.run([&] {
    SP24B_CUBLAS(cublasGemmEx(blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)d, (int)Tk, (int)F, &alpha, dB, dt, (int)d, dA, dt,
                              (int)F, &beta, dC, dt, (int)d, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  });
  int blas_ver = 0;
  cublasGetVersion(blas, &blas_ver);
  for (int k = 0; k < 2; ++k) {
    const Stats& s = k == 0 ? sparse : dense;
    out.kv("name", k == 0 ? "cusparselt_mm" : "cublas_gemm").kv("T", Tk).kv("d", d).kv("F", F).kv("dtype", dtname);
    out.stats(s);
    out.kv("tflops", flops / (s.median_us * 1e-6) / 1e12).kv("speedup", dense.median_us / s.median_us);
    out.kv("search", (long long)search).kv("cusparselt_version", (long long)CUSPARSELT_VERSION)
        .kv("cublas_version", (long long)blas_ver).kv("gpu", gpu_name());
    out.end();
  }
  cusparseLtMatmulPlanDestroy(&plan);
  cusparseLtMatmulAlgSelectionDestroy(&sel);
  cusparseLtMatDescriptorDestroy(&matA);
  cusparseLtMatDescriptorDestroy(&matB);
  cusparseLtMatDescriptorDestroy(&matC);
  cudaFree(dA);
  cudaFree(dB);
  cudaFree(dC);
  cudaFree(dAc);
  cudaFree(cbuf);
  cudaFree(ws);
}

int main(int argc, char** argv) {
  Args args(argc, argv,
            {{"shapes", "4096:21504,8192:43008,4096:16384"},
             {"tokens", "128,256,512,1024,2048,4096,8192,16384,32768,65536"},
             {"dtype", "bf16"}, {"reps", "50"}, {"warmup", "10"}, {"search", "0"}, {"out", "-"}},
            kUsage);
  const std::string dtname = args.dtype();
  try {
    JsonLines out(args.str("out"));
    cudaStream_t stream;
    SP24B_CUDA(cudaStreamCreate(&stream));
    cusparseLtHandle_t lt;
    SP24B_CSLT(cusparseLtInit(&lt));
    cublasHandle_t blas;
    SP24B_CUBLAS(cublasCreate(&blas));
    SP24B_CUBLAS(cublasSetStream(blas, stream));
    Timer timer((int)args.num("warmup"), (int)args.num("reps"), stream);
    const bool search = args.str("search") == "1";
    for (const Shape& sh : parse_shapes(args.str("shapes"))) {
      for (long long Tk : args.list("tokens")) {
        try {
          if (dtname == "bf16")
            run_case<__nv_bfloat16>(Tk, sh.d, sh.F, "bf16", CUDA_R_16BF, timer, lt, blas, stream, search, out);
          else
            run_case<__half>(Tk, sh.d, sh.F, "fp16", CUDA_R_16F, timer, lt, blas, stream, search, out);
        } catch (const std::exception& e) {  // report the shape and go on with the next
          cudaGetLastError();
          out.kv("name", "cusparselt_mm").kv("T", Tk).kv("d", sh.d).kv("F", sh.F).kv("dtype", dtname)
              .kv("status", "error").kv("reason", e.what());
          out.end();
        }
      }
    }
    cublasDestroy(blas);
    cusparseLtDestroy(&lt);
    cudaStreamDestroy(stream);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gemm: %s\n", e.what());
    return 1;
  }
  return 0;
}
