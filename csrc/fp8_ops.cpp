// Glue for the FP8 (e4m3) ops: validate, allocate, fill a Params struct, launch. Semantics:
// python/sp24/reference_fp8.py; the e4m3 rounding: sp24/fp8.h. As in sparse24_ops.cpp, one
// templated host function per op serves the CPU, Meta and CUDA dispatch keys.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#ifdef SP24_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "cusparselt/cslt.h"
#endif

#include "glue.h"
#include "sp24/checks.h"
#include "sp24/params.h"

namespace sp24 {
namespace {

void check_e4m3(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat8_e4m3fn, op, ": ", name, ".dtype must be torch.float8_e4m3fn, got ",
                   dtype_name(t.scalar_type()));
}

// sparsify24 of x, then the kept values quantised to e4m3 with one fp32 scale per row:
// (values (M, K/2) e4m3, indices (M, K/2) uint8, scales (M,) fp32, counts). On CUDA one kernel where
// it applies and pays (no counts, rows of 1024 to 32 KiB of kept values: sparsify24_fp8_fused_pays):
// the row's kept values wait in shared memory for its scale. Otherwise, and on the CPU, two steps: the 16-bit
// sparsify24 kernel into a scratch buffer, then the row quantisation (the scale of a row needs the
// whole row's amax before its first value can be written). The bits are the same either way.
template <Backend B>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sparsify24_fp8(const at::Tensor& x, c10::string_view algo,
                                                                          std::optional<c10::string_view> activation,
                                                                          bool with_counts) {
  const char* op = "sp24.sparsify24_fp8";
  int algo_id = 0;
  bool relu2 = false;
  check_sparsify24_args(op, x, algo, activation, &algo_id, &relu2);
  const auto M = x.sym_size(0), K = x.sym_size(1);
  auto [indices, counts] = sparsify24_index_shapes(x, with_counts);  // no 16-bit values: see scratch below
  auto values = at::empty_symint({M, K / 2}, x.options().dtype(at::kFloat8_e4m3fn));
  auto scales = at::empty_symint({M}, x.options().dtype(at::kFloat));
  if constexpr (B != Backend::kMeta) {
    Sparsify24Params p = sparsify24_params(x, nullptr, indices, counts, with_counts, algo_id, relu2);
    QuantizeRowsParams q;
    q.q = static_cast<uint8_t*>(values.data_ptr());
    q.scales = scales.data_ptr<float>();
    q.M = p.M;
    q.n = p.K / 2;
    q.dtype = p.dtype;
    if (p.M == 0) return {values, indices, scales, counts};
    at::Tensor kept;  // the two-step path's scratch: the 16-bit kept values
    auto scratch = [&]() {
      kept = at::empty({p.M, p.K / 2}, x.options());
      p.values = kept.data_ptr();
      q.values = kept.data_ptr();
    };
    if constexpr (B == Backend::kCPU) {
      scratch();
      if (p.K > 0) sparsify24_cpu(p);
      quantize_rows_e4m3_cpu(q);
    }
#ifdef SP24_WITH_CUDA
    if constexpr (B == Backend::kCUDA) {
      c10::cuda::CUDAGuard guard(x.device());
      if (sparsify24_fp8_fused_pays(p)) {
        sparsify24_fp8_fused_cuda(p, q, current_stream());
      } else {
        scratch();
        if (p.K > 0) sparsify24_cuda(p, current_stream());
        quantize_rows_e4m3_cuda(q, current_stream());
      }
    }
#endif
  }
  return {values, indices, scales, counts};
}

// Row-wise e4m3 quantisation of a dense x (M, n): (q (M, n) e4m3, scales (M,) fp32), the same rule
// as sparsify24_fp8's values (one scale per row; a (1, numel) view gives one scale per tensor).
template <Backend B>
std::tuple<at::Tensor, at::Tensor> quantize_rows_fp8(const at::Tensor& x_in) {
  const char* op = "sp24.quantize_rows_fp8";
  check_matrix(op, "x", x_in);
  check_float_dtype(op, "x", x_in);
  auto q = at::empty_symint(x_in.sym_sizes(), x_in.options().dtype(at::kFloat8_e4m3fn));
  auto scales = at::empty_symint({x_in.sym_size(0)}, x_in.options().dtype(at::kFloat));
  if constexpr (B != Backend::kMeta) {
    const at::Tensor x = x_in.contiguous();
    QuantizeRowsParams p;
    p.values = x.data_ptr();
    p.q = static_cast<uint8_t*>(q.data_ptr());
    p.scales = scales.data_ptr<float>();
    p.M = x.size(0);
    p.n = x.size(1);
    p.dtype = to_dtype(x.scalar_type());
    if (p.M == 0) return {q, scales};
    if constexpr (B == Backend::kCPU) quantize_rows_e4m3_cpu(p);
#ifdef SP24_WITH_CUDA
    if constexpr (B == Backend::kCUDA) {
      c10::cuda::CUDAGuard guard(x.device());
      quantize_rows_e4m3_cuda(p, current_stream());
    }
#endif
  }
  return {q, scales};
}

// sparsify24_transposed of x (T, N) (x[:, columns].T, 2:4 along the tokens), its kept values then
// quantised per row of the transposed operand: (values (C, T/2) e4m3, indices (C, T/2) uint8,
// scales (C,) fp32), for the backward's weight-gradient GEMMs. The 16-bit op (through the
// dispatcher: its CPU, Meta or CUDA kernel), then quantize_rows_fp8's kernel.
template <Backend B>
std::tuple<at::Tensor, at::Tensor, at::Tensor> sparsify24_transposed_fp8(const at::Tensor& x, c10::string_view algo,
                                                                         const std::optional<at::Tensor>& columns) {
  static const auto transposed = c10::Dispatcher::singleton()
                                     .findSchemaOrThrow("sp24::sparsify24_transposed", "")
                                     .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, c10::string_view,
                                                                               const std::optional<at::Tensor>&)>();
  auto [kept, indices] = transposed.call(x, algo, columns);
  auto [values, scales] = quantize_rows_fp8<B>(kept);
  return {values, indices, scales};
}

// The dense e4m3 (M, K) of a 2:4 e4m3 matrix in canonical form: its bytes scattered to the kept
// positions, zeros (0x00 = +0) elsewhere. Plain ATen, so the same on every device, and the 16-bit
// decompression's rule for malformed indices: each index taken & 3 (never out of bounds), and of
// two equal ones the second value wins (two scatters, in order: deterministic on CUDA too).
at::Tensor e4m3_to_dense(const at::Tensor& values, const at::Tensor& indices) {
  const int64_t M = values.size(0), H = values.size(1);
  auto dense = at::zeros({M, H / 2, 4}, values.options().dtype(at::kByte));
  const auto idx = indices.reshape({M, H / 2, 2}).bitwise_and(3).to(at::kLong);
  const auto v = values.view(at::kByte).reshape({M, H / 2, 2});
  for (int64_t s = 0; s < 2; ++s) dense.scatter_(2, idx.narrow(2, s, 1), v.narrow(2, s, 1));
  return dense.view({M, 2 * H}).view(at::kFloat8_e4m3fn);
}

#ifdef SP24_WITH_CUDA
// The 2:4 FP8 GEMM through cuSPARSELt, one alpha per row of D. With one scale for b, alpha =
// a_scales * b_scale and the bias enters as C (beta 1 per row): one GEMM writes the bf16 result.
// With a scale per column of b, cuSPARSELt writes alpha = a_scales rows in fp32 and the column
// scales and the bias follow in fp32, rounded once to bf16. Where cuSPARSELt cannot serve the
// problem: the dense FP8 GEMM on the decompressed A (torch._scaled_mm, row-wise scales), with one
// warning per distinct reason.
at::Tensor fp8_mm_cuda(const char* op, const at::Tensor& dense, const at::Tensor& a_scales, const at::Tensor& b,
                       const at::Tensor& b_scales, const std::optional<at::Tensor>& bias) {
  const int64_t M = dense.size(0), N = b.size(1);
  std::string why;
  if (b_scales.size(0) == 1) {
    const at::Tensor alpha = a_scales * b_scales;
    at::Tensor c;
    if (bias.has_value()) c = bias->view({1, N}).expand({M, N}).contiguous();
    auto out = cslt::try_fp8_mm(op, dense, b, alpha, c.defined() ? &c : nullptr, at::kBFloat16, &why);
    if (out.has_value()) return *out;
  } else {
    auto d32 = cslt::try_fp8_mm(op, dense, b, a_scales, nullptr, at::kFloat, &why);
    if (d32.has_value()) {
      at::Tensor t = *d32 * b_scales.view({1, N});
      if (bias.has_value()) t = t + bias->to(at::kFloat);
      return t.to(at::kBFloat16);
    }
  }
  cslt::warn_fallback(op, why);
  const auto sb = b_scales.size(0) == 1 ? b_scales.expand({N}) : b_scales;
  return at::_scaled_mm(dense, b, a_scales.reshape({-1, 1}).contiguous(), sb.reshape({1, -1}).contiguous(), bias,
                        std::nullopt, at::kBFloat16, false);
}
#endif

void check_scales(const char* op, const char* name, const at::Tensor& s, const c10::SymInt& n, bool one_ok,
                  const at::Tensor& like) {
  SP24_CHECK(s.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK_TYPE(s.scalar_type() == at::kFloat, op, ": ", name, ".dtype must be torch.float32, got ",
                   dtype_name(s.scalar_type()));
  SP24_CHECK(s.dim() == 1 && (s.sym_size(0) == n || (one_ok && s.sym_size(0) == 1)), op, ": ", name, " must have shape (",
             n, ",)", one_ok ? " or (1,)" : "", ", got ", s.sym_sizes());
  check_same_device(op, name, s, "values", like);
}

// Every scale must be finite and > 0: a NaN, Inf, zero or negative scale is refused with the first
// bad position. One pass and, on CUDA, one host synchronisation; sp24's own FFN, whose scales come
// from sparsify24_fp8, skips it (validate_scales=False) so that a NaN row propagates as in dense.
void validate_scales(const char* op, const char* name, const at::Tensor& s) {
  const auto bad = (s.isfinite().logical_not() | (s <= 0)).nonzero();
  if (bad.size(0) == 0) return;
  const int64_t i = bad[0][0].item<int64_t>();
  SP24_CHECK(false, op, ": ", name, " must be finite and > 0, got ", s[i].item<float>(), " at position ", i, " (",
             bad.size(0), " bad scale(s) in all); a NaN scale from sp24.sparsify24_fp8 marks a row that held a NaN or "
             "Inf, pass validate_scales=False to let it propagate");
}

// A @ B (+ bias) in bf16 for A the 2:4 e4m3 (M, K) (values, indices) with row scales a_scales (M,)
// and B (K, N) e4m3, K-major (B.t() contiguous, as W.t() of a row-major weight W (N, K)), with
// column scales b_scales (N,) or one scale (1,). M, K and N multiples of 16 on every device (the
// FP8 tensor-core GEMMs' rule).
template <Backend B>
at::Tensor sparse24_fp8_mm(const at::Tensor& values, const at::Tensor& indices, const at::Tensor& a_scales,
                           const at::Tensor& b, const at::Tensor& b_scales, const std::optional<at::Tensor>& bias,
                           bool validate) {
  const char* op = "sp24.sparse24_fp8_mm";
  check_matrix(op, "values", values);
  check_e4m3(op, "values", values);
  check_indices(op, indices);
  SP24_CHECK(values.sym_sizes() == indices.sym_sizes(), op, ": values and indices must have the same shape, got ",
             values.sym_sizes(), " and ", indices.sym_sizes());
  check_same_device(op, "values", values, "indices", indices);
  check_matrix(op, "b", b);
  check_e4m3(op, "b", b);
  check_same_device(op, "values", values, "b", b);
  const auto M = values.sym_size(0), K = 2 * values.sym_size(1), N = b.sym_size(1);
  SP24_CHECK(b.sym_size(0) == K, op, ": b.size(0) must equal K = 2 * values.size(1) = ", K, ", got ", b.sym_size(0));
  SP24_CHECK(M % 16 == 0 && K % 16 == 0 && N % 16 == 0, op,
             ": M, K and N must be multiples of 16 (the FP8 GEMMs' rule), got M = ", M, ", K = ", K, ", N = ", N,
             "; pad with zeros");
  SP24_CHECK(b.sym_stride(0) == 1 && b.sym_stride(1) == K, op,
             ": b must be K-major (b.t() contiguous, e.g. W.t() of a row-major (N, K) weight), got strides ",
             b.sym_strides());
  SP24_CHECK(values.is_contiguous() && indices.is_contiguous(), op, ": values and indices must be contiguous");
  check_scales(op, "a_scales", a_scales, M, false, values);
  check_scales(op, "b_scales", b_scales, N, true, values);
  if (bias.has_value()) {
    TORCH_CHECK_TYPE(bias->scalar_type() == at::kBFloat16, op, ": bias.dtype must be torch.bfloat16 (the output's), got ",
                     dtype_name(bias->scalar_type()));
    SP24_CHECK(bias->dim() == 1 && bias->sym_size(0) == N, op, ": bias must have shape (", N, ",), got ",
               bias->sym_sizes());
    check_same_device(op, "bias", *bias, "values", values);
  }
  if constexpr (B == Backend::kMeta) {
    return at::empty_symint({M, N}, values.options().dtype(at::kBFloat16));
  } else {
    if (validate) {
      validate_scales(op, "a_scales", a_scales);
      validate_scales(op, "b_scales", b_scales);
    }
    const auto dense = e4m3_to_dense(values, indices);
    if constexpr (B == Backend::kCPU) {
      // The reference's arithmetic: every e4m3 product is exact in fp64 and so is their sum (to
      // K = 2^17), so acc is exact in any summation order; then the scales and the bias in fp64,
      // rounded once to fp32 and once to bf16.
      auto acc = at::matmul(dense.to(at::kDouble), b.to(at::kDouble));
      acc = acc * a_scales.to(at::kDouble).unsqueeze(-1) * b_scales.to(at::kDouble).reshape({1, -1});
      if (bias.has_value()) acc = acc + bias->to(at::kDouble);
      return acc.to(at::kFloat).to(at::kBFloat16);
    }
#ifdef SP24_WITH_CUDA
    if constexpr (B == Backend::kCUDA) {
      c10::cuda::CUDAGuard guard(values.device());
      const auto* prop = at::cuda::getCurrentDeviceProperties();
      const int cc = prop->major * 10 + prop->minor;
      SP24_CHECK(cc >= 89, op, ": FP8 GEMMs need compute capability 8.9 or newer, got ", prop->major, ".", prop->minor,
                 " (", prop->name, "); use the bf16 path (sp24.relu2_ffn without fp8)");
      return fp8_mm_cuda(op, dense, a_scales, b, b_scales, bias);
    }
#endif
    return at::Tensor();
  }
}

}  // namespace

#define SP24_REGISTER_FP8(B)                            \
  m.impl("sparsify24_fp8", &sparsify24_fp8<B>);          \
  m.impl("quantize_rows_fp8", &quantize_rows_fp8<B>);    \
  m.impl("sparsify24_transposed_fp8", &sparsify24_transposed_fp8<B>); \
  m.impl("sparse24_fp8_mm", &sparse24_fp8_mm<B>);

TORCH_LIBRARY_IMPL(sp24, CPU, m) { SP24_REGISTER_FP8(Backend::kCPU) }
TORCH_LIBRARY_IMPL(sp24, Meta, m) { SP24_REGISTER_FP8(Backend::kMeta) }
#ifdef SP24_WITH_CUDA
TORCH_LIBRARY_IMPL(sp24, CUDA, m) { SP24_REGISTER_FP8(Backend::kCUDA) }
#endif

}  // namespace sp24
