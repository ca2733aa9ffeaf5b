// What the op glue files share: the backend tag of the templated
// host functions, torch's current CUDA stream, and sparsify24's argument checks, output shapes and
// kernel params.
#pragma once
#include <ATen/ATen.h>

#ifdef SP24_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

#include <tuple>

#include "sp24/checks.h"
#include "sp24/params.h"

namespace sp24 {

enum class Backend { kMeta, kCPU, kCUDA };

#ifdef SP24_WITH_CUDA
inline void* current_stream() { return at::cuda::getCurrentCUDAStream().stream(); }
#endif

// The arguments of sparsify24 and its variants: x a 2-D float matrix with adjacent row elements and
// K % 4 == 0, the algorithm and the activation (parsed into *algo_id / *relu2).
inline void check_sparsify24_args(const char* op, const at::Tensor& x, c10::string_view algo,
                                  std::optional<c10::string_view> activation, int* algo_id, bool* relu2) {
  check_matrix(op, "x", x);
  check_float_dtype(op, "x", x);
  check_unit_col_stride(op, "x", x);
  *algo_id = parse_algo(op, algo);
  *relu2 = parse_activation(op, activation);
  SP24_CHECK(x.sym_size(1) % 4 == 0, op, ": x.size(-1) must be a multiple of 4, got ", x.sym_size(1),
             "; pad the last dim with zeros to a multiple of 4");
}

// The indices (M, K/2) uint8 and the counts ((K,) int32 zeros, or empty) of a row-wise sparsify of x.
inline std::tuple<at::Tensor, at::Tensor> sparsify24_index_shapes(const at::Tensor& x, bool with_counts) {
  const auto M = x.sym_size(0), K = x.sym_size(1);
  auto indices = at::empty_symint({M, K / 2}, x.options().dtype(at::kByte));
  auto counts = with_counts ? at::zeros_symint({K}, x.options().dtype(at::kInt))
                            : at::empty({0}, x.options().dtype(at::kInt));
  return {indices, counts};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> sparsify24_shapes(const char* op, const at::Tensor& x,
                                                                 bool with_counts) {
  auto values = at::empty_symint({x.sym_size(0), x.sym_size(1) / 2}, x.options());
  auto [indices, counts] = sparsify24_index_shapes(x, with_counts);
  return {values, indices, counts};
}

inline Sparsify24Params sparsify24_params(const at::Tensor& x, void* values, const at::Tensor& indices,
                                   const at::Tensor& counts, bool with_counts, int algo_id, bool relu2) {
  Sparsify24Params p;
  p.x = x.data_ptr();
  p.x_row_stride = x.stride(0);
  p.values = values;
  p.indices = indices.data_ptr<uint8_t>();
  p.counts = with_counts ? counts.data_ptr<int32_t>() : nullptr;
  p.M = x.size(0);
  p.K = x.size(1);
  p.algo = algo_id;
  p.relu2 = relu2;
  p.dtype = to_dtype(x.scalar_type());
  return p;
}

}  // namespace sp24
