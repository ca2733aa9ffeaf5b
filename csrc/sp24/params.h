// Plain parameter structs shared by the CPU and CUDA kernels. Kernels never see at::Tensor: the
// glue in sparse24_ops.cpp validates, allocates, fills one of these and launches.
//
// Canonical 2:4 format of a dense (M, K) matrix A (K % 4 == 0), identical on every device:
//
//   dense row r:   | a0 a1 a2 a3 | a4 a5 a6 a7 | ...        group g = columns 4g .. 4g+3
//   kept (e.g.):   |  .  x  .  y |  z  .  .  w |
//   values[r]:     |  x     y    |  z     w    | ...        (M, K/2), kept values in index order
//   indices[r]:    |  1     3    |  0     3    | ...        (M, K/2) uint8 in 0..3, increasing
//
// values[r, 2g + s] = A[r, 4g + indices[r, 2g + s]]   for s in {0, 1}.
#pragma once
#include <cstdint>

namespace sp24 {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Row-wise 2:4 of x (M, K), optionally of relu(x)^2, optionally counting non-zeros per column
// of the (activated) input before sparsification.
struct Sparsify24Params {
  const void* x = nullptr;
  int64_t x_row_stride = 0;  // elements; the column stride is 1
  void* values = nullptr;    // (M, K/2) contiguous
  uint8_t* indices = nullptr;  // (M, K/2) contiguous
  int32_t* counts = nullptr;   // (K,) zero-initialised, or nullptr
  int64_t M = 0, K = 0;
  int algo = 0;
  bool relu2 = false;
  DType dtype = DType::kFloat32;
  // CUDA only (sparsify24_cslt): also write the metadata of the candidate cuSPARSELt layout
  // (sp24/cslt_layout.h) here, M*K/8 bytes; `values` is then the buffer's values region. Needs
  // M % 64 == 0, K % 32 == 0, a 16-bit dtype and the vectorised path (sparsify24_cuda_vectorised).
  uint8_t* cslt_meta = nullptr;
};

// 2:4 along the rows (tokens) of x (T, N), for the columns `columns` (C of them, any order) or all
// N: the result represents x[:, columns].T, of dense shape (C, T).
struct Sparsify24TransposedParams {
  const void* x = nullptr;
  int64_t x_row_stride = 0;
  const int64_t* columns = nullptr;  // (C,) or nullptr for all columns
  void* values = nullptr;            // (C, T/2) contiguous
  uint8_t* indices = nullptr;        // (C, T/2) contiguous
  int64_t T = 0, N = 0, C = 0;
  int algo = 0;
  DType dtype = DType::kFloat32;
  // CUDA only: (N,) int32 scratch for the column -> output-row map when `columns` is
  // given; allocated by the glue from torch's caching allocator.
  int32_t* workspace = nullptr;
};

// values = x at the positions of a given pattern; with relu2_backward, the Squared-ReLU backward
// dY1 = dY2 * 2*sqrt(Y2) on the kept positions, from the compressed Y2 (y2_values).
struct Apply24Params {
  const void* x = nullptr;  // (M, K), column stride 1
  int64_t x_row_stride = 0;
  const void* y2_values = nullptr;  // (M, K/2) contiguous, only for relu2_backward
  const uint8_t* indices = nullptr;  // (M, K/2) contiguous
  void* values = nullptr;            // (M, K/2) contiguous
  int64_t M = 0, K = 0;
  bool relu2_backward = false;
  DType dtype = DType::kFloat32;
};

struct ToDense24Params {
  const void* values = nullptr;      // (M, K/2) contiguous
  const uint8_t* indices = nullptr;  // (M, K/2) contiguous
  void* out = nullptr;               // (M, K) contiguous
  int64_t M = 0, K = 0;
  DType dtype = DType::kFloat32;
};

// The FFN backward's feature split of a row-wise 2:4 A (T, F), read from its compressed
// form: (tvalues, tindices) = 2:4 along the tokens of A[:, sparse_cols].T (Cs, T/2) and
// dense_t = A[:, dense_cols].T (Cd, T). A dropped position of A reads as +0.0.
struct TransposedSplit24Params {
  const void* values = nullptr;        // (T, F/2) contiguous
  const uint8_t* indices = nullptr;    // (T, F/2) contiguous
  const int64_t* sparse_cols = nullptr;  // (Cs,) any order, duplicates allowed
  const int64_t* dense_cols = nullptr;   // (Cd,) any order, duplicates allowed
  void* tvalues = nullptr;             // (Cs, T/2) contiguous
  uint8_t* tindices = nullptr;         // (Cs, T/2) contiguous
  void* dense_t = nullptr;             // (Cd, T) contiguous
  int64_t T = 0, F = 0, Cs = 0, Cd = 0;
  int algo = 0;
  DType dtype = DType::kFloat32;
  // CUDA only: (2F,) int32 scratch for the two feature -> output-row maps (sparse, then dense).
  int32_t* workspace = nullptr;
};

// Row-wise FP8 quantisation of the kept values (M, n) of a 2:4 matrix (sp24/fp8.h; semantics:
// python/sp24/reference_fp8.py): q (M, n) e4m3 bits, one fp32 scale per row (amax / 448; 1 for an
// all-zero row; NaN, with every q of the row NaN, for a row with a non-finite value).
struct QuantizeRowsParams {
  const void* values = nullptr;  // (M, n) contiguous
  uint8_t* q = nullptr;          // (M, n) contiguous
  float* scales = nullptr;       // (M,)
  int64_t M = 0, n = 0;
  DType dtype = DType::kFloat32;
  // CUDA, the fused sparsify24_fp8 kernel (one block per row, grid-stride): the most blocks it
  // launches. The emulation lane lowers it so that blocks go round the row loop.
  int64_t max_blocks = 65535;
};

// CPU kernels (csrc/cpu/sparse24_cpu.cpp).
void sparsify24_cpu(const Sparsify24Params& p);
void sparsify24_transposed_cpu(const Sparsify24TransposedParams& p);
void apply24_cpu(const Apply24Params& p);
void to_dense24_cpu(const ToDense24Params& p);
void transposed_split24_cpu(const TransposedSplit24Params& p);
void quantize_rows_e4m3_cpu(const QuantizeRowsParams& p);

#ifdef SP24_WITH_CUDA
// CUDA kernels (csrc/cuda/sparse24_cuda.cu); `stream` is a cudaStream_t.
void sparsify24_cuda(const Sparsify24Params& p, void* stream);
// Whether sparsify24_cuda takes its vectorised path for p (16-byte aligned rows, K % 8 == 0).
bool sparsify24_cuda_vectorised(const Sparsify24Params& p);
void sparsify24_transposed_cuda(const Sparsify24TransposedParams& p, void* stream);
void apply24_cuda(const Apply24Params& p, void* stream);
void to_dense24_cuda(const ToDense24Params& p, void* stream);
void transposed_split24_cuda(const TransposedSplit24Params& p, void* stream);
void quantize_rows_e4m3_cuda(const QuantizeRowsParams& p, void* stream);
// sparsify24_fp8 as one kernel (p.values unused: the kept values stay on chip), where it applies
// (fusable): no counts, no cuSPARSELt metadata, a row's K/2 kept values within 32 KiB.
bool sparsify24_fp8_fusable(const Sparsify24Params& p);
// Where the glue takes it: fusable and rows of at least 1024 elements (shorter rows: the chain).
bool sparsify24_fp8_fused_pays(const Sparsify24Params& p);
void sparsify24_fp8_fused_cuda(const Sparsify24Params& p, const QuantizeRowsParams& q, void* stream);
// The metadata region (M*K/8 bytes) of the candidate cuSPARSELt layout (sp24/cslt_layout.h) from the
// canonical indices (M, K/2); M % 64 == 0, K % 32 == 0.
void cslt_meta24_cuda(const uint8_t* indices, uint8_t* meta, int64_t M, int64_t K, void* stream);
#endif

}  // namespace sp24
