// What the op glue files share: the backend tag of the templated
// host functions, torch's current CUDA stream, and the sparsify24 output shapes and kernel params.
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

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> sparsify24_shapes(const char* op, const at::Tensor& x,
                                                                 bool with_counts) {
  const auto M = x.sym_size(0), K = x.sym_size(1);
  auto values = at::empty_symint({M, K / 2}, x.options());
  auto indices = at::empty_symint({M, K / 2}, x.options().dtype(at::kByte));
  auto counts = with_counts ? at::zeros_symint({K}, x.options().dtype(at::kInt))
                            : at::empty({0}, x.options().dtype(at::kInt));
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
