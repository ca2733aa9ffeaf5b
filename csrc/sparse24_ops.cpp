// Glue for every sp24 op: validate, allocate, fill a Params struct, launch.
// One templated host function per op serves the CPU, Meta and CUDA dispatch keys, so the checks
// and the output-size logic exist once; the Meta instantiation uses symbolic sizes only, so it
// also serves FakeTensor / torch.compile with dynamic shapes.
#include <ATen/ATen.h>
#include <torch/library.h>

#ifdef SP24_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#include "sp24/checks.h"
#include "sp24/params.h"

namespace sp24 {
namespace {

enum class Backend { kMeta, kCPU, kCUDA };

#ifdef SP24_WITH_CUDA
void* current_stream() { return at::cuda::getCurrentCUDAStream().stream(); }
#endif

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparsify24_shapes(const char* op, const at::Tensor& x,
                                                                 bool with_counts) {
  const auto M = x.sym_size(0), K = x.sym_size(1);
  auto values = at::empty_symint({M, K / 2}, x.options());
  auto indices = at::empty_symint({M, K / 2}, x.options().dtype(at::kByte));
  auto counts = with_counts ? at::zeros_symint({K}, x.options().dtype(at::kInt))
                            : at::empty({0}, x.options().dtype(at::kInt));
  return {values, indices, counts};
}

template <Backend B>
std::tuple<at::Tensor, at::Tensor, at::Tensor> sparsify24(const at::Tensor& x, c10::string_view algo,
                                                          std::optional<c10::string_view> activation,
                                                          bool with_counts) {
  const char* op = "sp24.sparsify24";
  check_matrix(op, "x", x);
  check_float_dtype(op, "x", x);
  check_unit_col_stride(op, "x", x);
  const int algo_id = parse_algo(op, algo);
  const bool relu2 = parse_activation(op, activation);
  SP24_CHECK(x.sym_size(1) % 4 == 0, op, ": x.size(-1) must be a multiple of 4, got ", x.sym_size(1),
             "; pad the last dim with zeros to a multiple of 4");
  auto [values, indices, counts] = sparsify24_shapes(op, x, with_counts);
  if constexpr (B != Backend::kMeta) {
    Sparsify24Params p;
    p.x = x.data_ptr();
    p.x_row_stride = x.stride(0);
    p.values = values.data_ptr();
    p.indices = indices.data_ptr<uint8_t>();
    p.counts = with_counts ? counts.data_ptr<int32_t>() : nullptr;
    p.M = x.size(0);
    p.K = x.size(1);
    p.algo = algo_id;
    p.relu2 = relu2;
    p.dtype = to_dtype(x.scalar_type());
    if (p.M == 0 || p.K == 0) return {values, indices, counts};
    if constexpr (B == Backend::kCPU) sparsify24_cpu(p);
#ifdef SP24_WITH_CUDA
    if constexpr (B == Backend::kCUDA) {
      c10::cuda::CUDAGuard guard(x.device());
      sparsify24_cuda(p, current_stream());
    }
#endif
  }
  return {values, indices, counts};
}

template <Backend B>
std::tuple<at::Tensor, at::Tensor> sparsify24_transposed(const at::Tensor& x, c10::string_view algo,
                                                         const std::optional<at::Tensor>& columns) {
  const char* op = "sp24.sparsify24_transposed";
  check_matrix(op, "x", x);
  check_float_dtype(op, "x", x);
  check_unit_col_stride(op, "x", x);
  const int algo_id = parse_algo(op, algo);
  const auto T = x.sym_size(0);
  SP24_CHECK(T % 4 == 0, op, ": x.size(0) (the tokens, the 2:4 direction) must be a multiple of 4, got ", T,
             "; pad the rows with zeros to a multiple of 4");
  c10::SymInt C = x.sym_size(1);
  if (columns.has_value()) {
    const auto& c = *columns;
    SP24_CHECK(c.dim() == 1, op, ": columns must be 1-D, got a ", c.dim(), "-D tensor of shape ", c.sym_sizes());
    SP24_CHECK(c.scalar_type() == at::kLong, op, ": columns must be int64, got ", dtype_name(c.scalar_type()));
    check_same_device(op, "x", x, "columns", c);
    C = c.sym_size(0);
  }
  auto values = at::empty_symint({C, T / 2}, x.options());
  auto indices = at::empty_symint({C, T / 2}, x.options().dtype(at::kByte));
  if constexpr (B != Backend::kMeta) {
    at::Tensor cols;
    if (columns.has_value()) {
      cols = columns->contiguous();
      if constexpr (B == Backend::kCPU) {
        // Out-of-range columns would read outside x: refuse them (on CUDA the kernel clamps and
        // the Python wrapper checks).
        if (cols.numel() > 0) {
          const int64_t lo = cols.min().item<int64_t>(), hi = cols.max().item<int64_t>();
          SP24_CHECK(lo >= 0 && hi < x.size(1), op, ": columns must lie in [0, ", x.size(1), "), got values in [",
                     lo, ", ", hi, "]");
        }
      }
    }
    Sparsify24TransposedParams p;
    p.x = x.data_ptr();
    p.x_row_stride = x.stride(0);
    p.columns = columns.has_value() ? cols.data_ptr<int64_t>() : nullptr;
    p.values = values.data_ptr();
    p.indices = indices.data_ptr<uint8_t>();
    p.T = x.size(0);
    p.N = x.size(1);
    p.C = values.size(0);
    p.algo = algo_id;
    p.dtype = to_dtype(x.scalar_type());
    if (p.T == 0 || p.C == 0) return {values, indices};
    if constexpr (B == Backend::kCPU) sparsify24_transposed_cpu(p);
#ifdef SP24_WITH_CUDA
    if constexpr (B == Backend::kCUDA) {
      c10::cuda::CUDAGuard guard(x.device());
      sparsify24_transposed_cuda(p, current_stream());
    }
#endif
  }
  return {values, indices};
}

template <Backend B>
at::Tensor apply24_impl(const char* op, const at::Tensor& x, const at::Tensor* y2_values, const at::Tensor& indices) {
  check_matrix(op, "x", x);
  check_float_dtype(op, "x", x);
  check_unit_col_stride(op, "x", x);
  check_indices(op, indices);
  check_same_device(op, "x", x, "indices", indices);
  SP24_CHECK(x.sym_size(1) % 4 == 0, op, ": x.size(-1) must be a multiple of 4, got ", x.sym_size(1));
  SP24_CHECK(indices.sym_size(0) == x.sym_size(0) && indices.sym_size(1) * 2 == x.sym_size(1), op,
             ": indices must have shape (M, K/2) = (", x.sym_size(0), ", ", x.sym_size(1) / 2, ") for x of shape ",
             x.sym_sizes(), ", got ", indices.sym_sizes());
  if (y2_values) {
    check_values(op, "y2_values", *y2_values, indices);
    check_same_device(op, "x", x, "y2_values", *y2_values);
    SP24_CHECK(y2_values->scalar_type() == x.scalar_type(), op, ": y2_values.dtype must equal grad.dtype (",
               dtype_name(x.scalar_type()), "), got ", dtype_name(y2_values->scalar_type()));
  }
  auto values = at::empty_symint(indices.sym_sizes(), x.options());
  if constexpr (B != Backend::kMeta) {
    Apply24Params p;
    p.x = x.data_ptr();
    p.x_row_stride = x.stride(0);
    p.y2_values = y2_values ? y2_values->data_ptr() : nullptr;
    p.indices = indices.data_ptr<uint8_t>();
    p.values = values.data_ptr();
    p.M = x.size(0);
    p.K = x.size(1);
    p.relu2_backward = y2_values != nullptr;
    p.dtype = to_dtype(x.scalar_type());
    if (p.M == 0 || p.K == 0) return values;
    if constexpr (B == Backend::kCPU) apply24_cpu(p);
#ifdef SP24_WITH_CUDA
    if constexpr (B == Backend::kCUDA) {
      c10::cuda::CUDAGuard guard(x.device());
      apply24_cuda(p, current_stream());
    }
#endif
  }
  return values;
}

template <Backend B>
at::Tensor sparse24_apply(const at::Tensor& x, const at::Tensor& indices) {
  return apply24_impl<B>("sp24.sparse24_apply", x, nullptr, indices);
}

template <Backend B>
at::Tensor sparse24_apply_relu2_backward(const at::Tensor& grad, const at::Tensor& y2_values,
                                         const at::Tensor& indices) {
  return apply24_impl<B>("sp24.sparse24_apply_relu2_backward", grad, &y2_values, indices);
}

template <Backend B>
at::Tensor sparse24_to_dense(const at::Tensor& values, const at::Tensor& indices) {
  const char* op = "sp24.sparse24_to_dense";
  check_indices(op, indices);
  check_values(op, "values", values, indices);
  check_same_device(op, "values", values, "indices", indices);
  auto out = at::empty_symint({values.sym_size(0), values.sym_size(1) * 2}, values.options());
  if constexpr (B != Backend::kMeta) {
    ToDense24Params p;
    p.values = values.data_ptr();
    p.indices = indices.data_ptr<uint8_t>();
    p.out = out.data_ptr();
    p.M = out.size(0);
    p.K = out.size(1);
    p.dtype = to_dtype(values.scalar_type());
    if (p.M == 0 || p.K == 0) return out;
    if constexpr (B == Backend::kCPU) to_dense24_cpu(p);
#ifdef SP24_WITH_CUDA
    if constexpr (B == Backend::kCUDA) {
      c10::cuda::CUDAGuard guard(values.device());
      to_dense24_cuda(p, current_stream());
    }
#endif
  }
  return out;
}

template <Backend B>
at::Tensor sparse24_mm(const at::Tensor& values, const at::Tensor& indices, const at::Tensor& b,
                       const std::optional<at::Tensor>& bias, std::optional<at::ScalarType> out_dtype) {
  const char* op = "sp24.sparse24_mm";
  check_indices(op, indices);
  check_values(op, "values", values, indices);
  check_same_device(op, "values", values, "indices", indices);
  check_matrix(op, "b", b);
  check_same_device(op, "values", values, "b", b);
  SP24_CHECK(b.scalar_type() == values.scalar_type(), op, ": b.dtype must equal the sparse operand's dtype (",
             dtype_name(values.scalar_type()), "), got ", dtype_name(b.scalar_type()));
  const auto K = values.sym_size(1) * 2;
  SP24_CHECK(b.sym_size(0) == K, op, ": shapes do not match for A @ b: A is (", values.sym_size(0), ", ", K,
             ") and b is ", b.sym_sizes(), "; b.size(0) must be ", K);
  const auto N = b.sym_size(1);
  if (bias.has_value()) {
    SP24_CHECK(bias->dim() == 1 && bias->sym_size(0) == N, op, ": bias must have shape (", N, ",), got ",
               bias->sym_sizes());
    SP24_CHECK(bias->scalar_type() == values.scalar_type(), op, ": bias.dtype must equal the sparse operand's dtype (",
               dtype_name(values.scalar_type()), "), got ", dtype_name(bias->scalar_type()));
    check_same_device(op, "values", values, "bias", *bias);
  }
  const auto odt = out_dtype.value_or(values.scalar_type());
  SP24_CHECK(is_float_dtype(odt), op, ": out_dtype must be torch.float16, torch.bfloat16 or torch.float32, got ",
             dtype_name(odt));
  if constexpr (B == Backend::kMeta) {
    return at::empty_symint({values.sym_size(0), N}, values.options().dtype(odt));
  } else {
    // Reference-grade path (decompress, fp32 GEMM, one rounding). The cuSPARSELt path replaces it
    // on CUDA where it is available.
    auto a = sparse24_to_dense<B>(values, indices).to(at::kFloat);
    auto out = at::mm(a, b.to(at::kFloat));
    if (bias.has_value()) out.add_(bias->to(at::kFloat));
    return out.to(odt);
  }
}

}  // namespace

#define SP24_REGISTER_ALL(B)                                                        \
  m.impl("sparsify24", &sparsify24<B>);                                             \
  m.impl("sparsify24_transposed", &sparsify24_transposed<B>);                       \
  m.impl("sparse24_apply", &sparse24_apply<B>);                                     \
  m.impl("sparse24_apply_relu2_backward", &sparse24_apply_relu2_backward<B>);       \
  m.impl("sparse24_to_dense", &sparse24_to_dense<B>);                               \
  m.impl("sparse24_mm", &sparse24_mm<B>);

TORCH_LIBRARY_IMPL(sp24, CPU, m) { SP24_REGISTER_ALL(Backend::kCPU) }
TORCH_LIBRARY_IMPL(sp24, Meta, m) { SP24_REGISTER_ALL(Backend::kMeta) }
#ifdef SP24_WITH_CUDA
TORCH_LIBRARY_IMPL(sp24, CUDA, m) { SP24_REGISTER_ALL(Backend::kCUDA) }
#endif

}  // namespace sp24
