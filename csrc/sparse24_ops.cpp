// Glue for every sp24 op: validate, allocate, fill a Params struct, launch.
// One templated host function per op serves the CPU, Meta and CUDA dispatch keys, so the checks
// and the output-size logic exist once; the Meta instantiation uses symbolic sizes only, so it
// also serves FakeTensor / torch.compile with dynamic shapes.
#include <ATen/ATen.h>
#include <torch/library.h>

#ifdef SP24_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "cusparselt/cslt.h"
#endif

#include <mutex>

#include "glue.h"
#include "sp24/checks.h"
#include "sp24/cslt_identity.h"
#include "sp24/cslt_layout.h"
#include "sp24/params.h"

namespace sp24 {
namespace {

template <Backend B>
std::tuple<at::Tensor, at::Tensor, at::Tensor> sparsify24(const at::Tensor& x, c10::string_view algo,
                                                          std::optional<c10::string_view> activation,
                                                          bool with_counts) {
  const char* op = "sp24.sparsify24";
  int algo_id = 0;
  bool relu2 = false;
  check_sparsify24_args(op, x, algo, activation, &algo_id, &relu2);
  auto [values, indices, counts] = sparsify24_shapes(op, x, with_counts);
  if constexpr (B != Backend::kMeta) {
    const Sparsify24Params p = sparsify24_params(x, values.data_ptr(), indices, counts, with_counts, algo_id, relu2);
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
    check_columns(op, "columns", *columns, "x", x);
    C = columns->sym_size(0);
  }
  auto values = at::empty_symint({C, T / 2}, x.options());
  auto indices = at::empty_symint({C, T / 2}, x.options().dtype(at::kByte));
  if constexpr (B != Backend::kMeta) {
    at::Tensor cols;
    if (columns.has_value()) {
      cols = columns->contiguous();
      check_columns_range(op, {{"columns", &cols}}, x.size(1));  // CPU and CUDA alike
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
      // Column -> output-row map for the column subset (stream-ordered: freeing it after the
      // launch is safe with the caching allocator).
      at::Tensor ws;
      if (columns.has_value()) {  // p.N > 0: check_columns_range refused any column of an empty x
        ws = at::empty({p.N}, x.options().dtype(at::kInt));
        p.workspace = ws.data_ptr<int32_t>();
      }
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
  check_compressed(op, values, indices);
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

// fp32 GEMM on a decompressed operand, bias added before one rounding to out_dtype: the numerics
// of every sp24 GEMM, used by the CPU path and by the CUDA dense fallback. The operands are widened
// to fp32, so the reduced-precision-reduction flags of 16-bit GEMMs do not apply. torch's fp32
// matmul flags must not apply either, and no global flag may be touched to get there (found in
// review: switching them process-wide made another thread's reads of torch.backends.cuda.matmul
// raise "mix of the legacy and new APIs" while a state was half-written):
// - TF32 (CUDA) is switched off for this thread by at::NoTF32Guard, which cuBLAS's handle set-up
//   checks before torch's TF32 flags;
// - on CPU, a reduced oneDNN fp32 precision (torch.backends.mkldnn.matmul.fp32_precision "bf16" /
//   "tf32", which set_float32_matmul_precision("medium") also sets) has no thread-local switch, so
//   the product is then accumulated in fp64 instead (exact products, a more exact sum, one rounding
//   to fp32): never less exact than fp32 accumulation, never bf16. With IEEE precision, or torch's
//   default "none" (which resolves to IEEE), it is the plain fp32 GEMM.
at::Tensor mm_fp32(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias,
                   at::ScalarType odt) {
  at::Tensor out;
  // float32Precision resolves "none" (torch's default: inherit) through the backend and generic
  // levels; only BF16 / TF32 are reduced. ("!= IEEE" took the fp64 path under the default "none",
  // which doubled the CPU GEMM time and moved the bits off the plain fp32 GEMM's.)
  const auto prec = a.is_cpu() ? at::globalContext().float32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL)
                               : at::Float32Precision::IEEE;
  if (prec == at::Float32Precision::BF16 || prec == at::Float32Precision::TF32) {
    out = at::mm(a.to(at::kDouble), b.to(at::kDouble)).to(at::kFloat);
  } else {
    at::NoTF32Guard no_tf32;
    out = at::mm(a.to(at::kFloat), b.to(at::kFloat));
  }
  if (bias.has_value()) out.add_(bias->to(at::kFloat));
  return out.to(odt);
}

template <Backend B>
at::Tensor sparse24_mm(const at::Tensor& values, const at::Tensor& indices, const at::Tensor& b,
                       const std::optional<at::Tensor>& bias, std::optional<at::ScalarType> out_dtype) {
  const char* op = "sp24.sparse24_mm";
  check_compressed(op, values, indices);
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
  }
#ifdef SP24_WITH_CUDA
  if constexpr (B == Backend::kCUDA) {
    c10::cuda::CUDAGuard guard(values.device());
    const int64_t M = values.size(0), Kc = values.size(1) * 2, Nc = b.size(1);
    const auto dt = values.scalar_type();
    std::optional<at::Tensor> dense;  // made only if cuSPARSELt's compression or the fallback needs it
    auto a_dense = [&]() {
      if (!dense.has_value()) dense = sparse24_to_dense<B>(values, indices);
      return *dense;
    };
    // The static rules and the plan first (cached per shape): a problem cuSPARSELt refuses does
    // not pay for a compression it cannot use.
    std::string why = M > 0 && Kc > 0 && Nc > 0 ? cslt::mm_refusal(op, M, Kc, b, bias.has_value(), odt, false)
                                                : std::string("empty problem");
    if (why.empty()) {
      // try_*, not compress: an operand cuSPARSELt refuses (e.g. too many elements for one
      // descriptor) takes the dense fallback below instead of raising.
      auto ac = cslt::try_compress_sp24(op, values.contiguous(), indices.contiguous(), a_dense, false, &why);
      auto r = ac.has_value() ? cslt::try_mm(op, *ac, M, Kc, b, bias, odt, false, &why) : std::nullopt;
      if (r.has_value()) return *r;
    }
    if (M > 0 && Kc > 0 && Nc > 0) cslt::warn_fallback(op, why);
    // Dense fallback with the contract's numerics: fp32 accumulation, bias added before one rounding,
    // whatever torch's TF32 / reduced-precision flags say (mm_fp32).
    return mm_fp32(a_dense(), b, bias, odt);
  }
#endif
  if constexpr (B != Backend::kMeta) {
    // Reference-grade path (decompress, fp32 GEMM, one rounding). The cuSPARSELt path replaces it
    // on CUDA where it is available.
    return mm_fp32(sparse24_to_dense<B>(values, indices), b, bias, odt);
  }
}


// ---- the reusable GEMM-ready buffer (sparse24_cslt_compress / sparse24_cslt_mm) -------------
// The buffer is device-specific and opaque: on CUDA it is cuSPARSELt's compressed layout; on CPU
// (reference-grade) it is sp24's own packing of the same size (sp24.reference.cslt_pack):
//
//   [ values (M, K/2) as raw bytes | metadata (M, K/8) bytes | zeros up to cslt_bytes(M, K) ]
//   metadata byte j of row r = nib(2j) | nib(2j+1) << 4,  nib(g) = idx[r, 2g] | idx[r, 2g+1] << 2
//
// Only sparse24_cslt_mm on the same device reads it back. Size: cslt_bytes (sp24/cslt_layout.h).

// The buffer size for (M, K): symbolic where the sizes are, overflow-checked where they are concrete.
c10::SymInt cslt_buffer_bytes(const char* op, const c10::SymInt& M, const c10::SymInt& K, int64_t es) {
  const auto m = M.maybe_as_int(), k = K.maybe_as_int();
  if (m.has_value() && k.has_value()) {
    int64_t bytes = 0;
    SP24_CHECK(cslt_bytes_checked(*m, *k, es, &bytes), op, ": the GEMM-ready buffer of a (", *m, ", ", *k,
               ") 2:4 operand of ", es, "-byte elements does not fit in int64 bytes; check m and k");
    return c10::SymInt(bytes);
  }
  return cslt_bytes(M, K, es);
}

void check_cslt_dims(const char* op, const c10::SymInt& M, const c10::SymInt& K) {
  SP24_CHECK(M >= 0 && K >= 0, op, ": the 2:4 operand's dims (M, K) must be >= 0, got (", M, ", ", K, ")");
  SP24_CHECK(M % 16 == 0 && K % 16 == 0, op, ": the 2:4 operand's dims (M, K) must be multiples of 16 for ",
             "cuSPARSELt, got (", M, ", ", K, "); pad them with zeros, or use sp24.mm / sparse24_mm, which falls back ",
             "to a dense GEMM");
}

void check_cslt_dtype(const char* op, const char* name, at::ScalarType t) {
  TORCH_CHECK_TYPE(t == at::kHalf || t == at::kBFloat16, op, ": ", name,
                   ".dtype must be torch.float16 or torch.bfloat16 (cuSPARSELt's float32 mode is 1:2, not 2:4), got ",
                   dtype_name(t), "; use sp24.mm / sparse24_mm for float32");
}

template <Backend B>
at::Tensor sparse24_cslt_compress(const at::Tensor& values, const at::Tensor& indices) {
  const char* op = "sp24.sparse24_cslt_compress";
  check_compressed(op, values, indices);
  check_cslt_dtype(op, "values", values.scalar_type());
  const auto M = values.sym_size(0), K = values.sym_size(1) * 2;
  check_cslt_dims(op, M, K);
  const auto es = static_cast<int64_t>(c10::elementSize(values.scalar_type()));
  const auto bytes = cslt_buffer_bytes(op, M, K, es);
  if constexpr (B == Backend::kMeta) {
    return at::empty_symint({bytes}, values.options().dtype(at::kByte));
  }
#ifdef SP24_WITH_CUDA
  if constexpr (B == Backend::kCUDA) {
    c10::cuda::CUDAGuard guard(values.device());
    if (values.numel() == 0) return at::zeros({0}, values.options().dtype(at::kByte));
    std::string why;
    auto r = cslt::try_compress_sp24(op, values.contiguous(), indices.contiguous(),
                                     [&]() { return sparse24_to_dense<B>(values, indices); }, true, &why);
    TORCH_CHECK_VALUE(r.has_value(), op, ": cuSPARSELt ", cslt::version(), " cannot compress this operand: ", why,
                      "; use sp24.mm / sparse24_mm, which falls back to a dense GEMM");
    return *r;
  }
#endif
  const int64_t Mi = values.size(0);
  const int64_t G = values.size(1) / 2;  // groups of 4 per row (explicit sizes: M may be 0)
  // & 3: an index outside 0..3 (invalid input) stays inside its own 2 bits, as in to_dense and the
  // CUDA layout writers, so that cslt_mm(compress(v, i)) == sparse24_mm(v, i) for any bytes
  auto idx = at::bitwise_and(indices, 3).view({Mi, G, 2});
  auto nib = at::bitwise_or(idx.select(2, 0), at::bitwise_left_shift(idx.select(2, 1), 2)).view({Mi, G / 2, 2});
  auto meta = at::bitwise_or(nib.select(2, 0), at::bitwise_left_shift(nib.select(2, 1), 4));
  const int64_t used = values.numel() * es + meta.numel();
  return at::cat({values.contiguous().view(at::kByte).reshape({-1}), meta.reshape({-1}),
                  at::zeros({bytes.expect_int() - used}, values.options().dtype(at::kByte))});
}

// sparsify24 + sparse24_cslt_compress in one op: (compressed, indices, counts), where compressed
// is sparse24_cslt_compress(values, indices) of sparsify24(x, ...)'s values and indices. On CUDA
// (sm_90, see csrc/cusparselt/cslt.h) one kernel writes the buffer while sparsifying, for shapes
// where that kernel was checked equal to cuSPARSELt's compression; elsewhere, the two steps.
template <Backend B>
std::tuple<at::Tensor, at::Tensor, at::Tensor> sparsify24_cslt(const at::Tensor& x, c10::string_view algo,
                                                               std::optional<c10::string_view> activation,
                                                               bool with_counts) {
  const char* op = "sp24.sparsify24_cslt";
  check_matrix(op, "x", x);
  check_cslt_dtype(op, "x", x.scalar_type());
  check_unit_col_stride(op, "x", x);
  parse_algo(op, algo);
  parse_activation(op, activation);
  const auto M = x.sym_size(0), K = x.sym_size(1);
  check_cslt_dims(op, M, K);
  const auto es = static_cast<int64_t>(c10::elementSize(x.scalar_type()));
  const auto nbytes = cslt_buffer_bytes(op, M, K, es);
  if constexpr (B == Backend::kMeta) {
    auto [values, indices, counts] = sparsify24_shapes(op, x, with_counts);
    return {at::empty_symint({nbytes}, x.options().dtype(at::kByte)), indices, counts};
  }
#ifdef SP24_WITH_CUDA
  if constexpr (B == Backend::kCUDA) {
    c10::cuda::CUDAGuard guard(x.device());
    const int64_t Mi = x.size(0), Ki = x.size(1), bytes = nbytes.expect_int();
    if (Mi > 0 && Ki > 0 && cslt::direct_allowed(x, Mi, Ki)) {
      at::Tensor indices = at::empty({Mi, Ki / 2}, x.options().dtype(at::kByte));
      at::Tensor counts = with_counts ? at::zeros({Ki}, x.options().dtype(at::kInt)) : at::empty({0}, x.options().dtype(at::kInt));
      const Sparsify24Params p = sparsify24_params(x, nullptr, indices, counts, with_counts, parse_algo(op, algo),
                                             parse_activation(op, activation));
      auto w = sparsify24_cuda_vectorised(p) ? cslt::direct_writers(op, x, Mi, Ki) : std::nullopt;
      if (w.has_value() && w->fused && w->bytes <= bytes) {
        // one kernel: values and metadata straight into the buffer, indices and counts as sparsify24
        return {cslt::write_fused(p, x.options(), bytes), indices, counts};
      }
    }
    // two steps: sparsify24, then the buffer (the pack writer where it was checked, else cuSPARSELt)
    auto [values, indices, counts] = sparsify24<B>(x, algo, activation, with_counts);
    return {sparse24_cslt_compress<B>(values, indices), indices, counts};
  }
#endif
  if constexpr (B != Backend::kMeta) {
    auto [values, indices, counts] = sparsify24<B>(x, algo, activation, with_counts);
    return {sparse24_cslt_compress<B>(values, indices), indices, counts};
  }
}

// The identity this call needs of its buffer (sp24/cslt_identity.h): the layout the device of b
// reads, (m, k), b's dtype, and on CUDA the loaded cuSPARSELt and the GPU's architecture.
CsltIdentity expected_identity(const at::Tensor& b, int64_t m, int64_t k) {
  CsltIdentity id;
  id.m = m;
  id.k = k;
  id.dtype = b.scalar_type() == at::kHalf ? 1 : 2;
  id.kind = kLayoutCpuPacking;
#ifdef SP24_WITH_CUDA
  if (b.is_cuda()) {
    id.kind = kLayoutCusparselt;
    id.cslt_version = cslt::runtime_version();
    id.arch = cslt::device_arch(b.get_device());
  }
#endif
  return id;
}

void check_identity(const char* op, const at::Tensor& identity, const at::Tensor& b, int64_t m, int64_t k) {
  SP24_CHECK(identity.device().is_cpu() && identity.scalar_type() == at::kLong && identity.dim() == 1 &&
                 identity.numel() == kCsltIdentityWords,
             op, ": identity must be the CPU int64 tensor of ", kCsltIdentityWords,
             " words made with the buffer (sp24._ops.cslt_identity), got a ", identity.dim(), "-D ",
             dtype_name(identity.scalar_type()), " tensor of ", identity.numel(), " elements on ", identity.device());
  const at::Tensor w = identity.contiguous();
  CsltIdentity have;
  SP24_CHECK(CsltIdentity::from_words(w.data_ptr<int64_t>(), &have), op,
             ": identity is not a GEMM-ready buffer identity of format ", kCsltIdentityFormat,
             " (magic or format word differ); rebuild the buffer with sp24.sparse24_cslt_compress");
  const CsltIdentity want = expected_identity(b, m, k);
  SP24_CHECK(have == want, op, ": the buffer is ", have.describe(), ", but this call needs ", want.describe(),
             "; compress the operand again on b's device with b's dtype (sparse24_cslt_compress), and pass the m and "
             "k it was compressed with");
}

template <Backend B>
at::Tensor sparse24_cslt_mm(const at::Tensor& compressed, c10::SymInt m, c10::SymInt k, const at::Tensor& b,
                            const std::optional<at::Tensor>& bias, std::optional<at::ScalarType> out_dtype,
                            bool transpose_result, const std::optional<at::Tensor>& identity) {
  const char* op = "sp24.sparse24_cslt_mm";
  SP24_CHECK(compressed.dim() == 1 && compressed.scalar_type() == at::kByte && compressed.is_contiguous(), op,
             ": compressed must be the 1-D contiguous uint8 buffer returned by sp24.sparse24_cslt_compress, got a ",
             compressed.dim(), "-D ", dtype_name(compressed.scalar_type()), " tensor");
  check_matrix(op, "b", b);
  check_same_device(op, "compressed", compressed, "b", b);
  check_cslt_dtype(op, "b", b.scalar_type());
  check_cslt_dims(op, m, k);
  SP24_CHECK(b.sym_size(0) == k, op, ": shapes do not match for A @ b: A is (", m, ", ", k, ") and b is ", b.sym_sizes(),
             "; b.size(0) must be ", k);
  const auto N = b.sym_size(1);
  SP24_CHECK(N % 16 == 0, op, ": b.size(1) must be a multiple of 16 for cuSPARSELt, got ", N,
             "; pad b with zero columns, or use sp24.mm / sparse24_mm");
  const auto es = static_cast<int64_t>(c10::elementSize(b.scalar_type()));
  const auto want = cslt_buffer_bytes(op, m, k, es);
  SP24_CHECK(compressed.sym_size(0) == want, op, ": compressed has ", compressed.sym_size(0), " bytes but a (", m, ", ",
             k, ") ", dtype_name(b.scalar_type()), " 2:4 matrix compresses to ", want,
             " bytes; pass the m, k and dtype it was compressed with");
  if (bias.has_value()) {
    SP24_CHECK(bias->dim() == 1 && bias->sym_size(0) == N, op, ": bias must have shape (", N, ",), got ", bias->sym_sizes());
    SP24_CHECK(bias->scalar_type() == b.scalar_type(), op, ": bias.dtype must equal b.dtype (", dtype_name(b.scalar_type()),
               "), got ", dtype_name(bias->scalar_type()));
    check_same_device(op, "b", b, "bias", *bias);
  }
  const auto odt = out_dtype.value_or(b.scalar_type());
  // The same rule on every device: cuSPARSELt pairs 16-bit inputs only with an output of their type,
  // and a buffer in its layout cannot be decompressed for a dense fallback.
  SP24_CHECK(odt == b.scalar_type(), op, ": out_dtype must be b.dtype (", dtype_name(b.scalar_type()),
             ") or None, got ", dtype_name(odt), ": cuSPARSELt pairs ", dtype_name(b.scalar_type()),
             " inputs only with a ", dtype_name(b.scalar_type()),
             " output; for a float32 result use sp24.mm / sparse24_mm(..., out_dtype=torch.float32), whose dense "
             "fallback accumulates in fp32 and rounds once");
  if constexpr (B == Backend::kMeta) {
    return transpose_result ? at::empty_symint({N, m}, b.options().dtype(odt))
                            : at::empty_symint({m, N}, b.options().dtype(odt));
  }
  const int64_t Mi = m.expect_int(), Ki = k.expect_int(), Ni = b.size(1);
  if (identity.has_value()) check_identity(op, *identity, b, Mi, Ki);
#ifdef SP24_WITH_CUDA
  if constexpr (B == Backend::kCUDA) {
    c10::cuda::CUDAGuard guard(b.device());
    if (Mi == 0 || Ki == 0 || Ni == 0) {
      auto z = transpose_result ? at::zeros({Ni, Mi}, b.options().dtype(odt)) : at::zeros({Mi, Ni}, b.options().dtype(odt));
      if (bias.has_value()) z.add_(transpose_result ? bias->view({Ni, 1}) : bias->view({1, Ni}));
      return z;
    }
    std::string why;
    auto r = cslt::try_mm(op, compressed, Mi, Ki, b, bias, odt, transpose_result, &why);
    SP24_CHECK(r.has_value(), op, ": cuSPARSELt ", cslt::version(), " cannot serve this problem: ", why,
               "; use sp24.mm / sparse24_mm, which falls back to a dense GEMM");
    return *r;
  }
#endif
  // CPU: unpack sp24's packing, then the reference-grade sparse24_mm.
  const int64_t nv = Mi * (Ki / 2) * es;
  auto values = compressed.slice(0, 0, nv).view(b.scalar_type()).view({Mi, Ki / 2});
  auto meta = compressed.slice(0, nv, nv + Mi * Ki / 8).view({Mi, Ki / 8});
  auto nib = at::stack({at::bitwise_and(meta, 15), at::bitwise_right_shift(meta, 4)}, 2).view({Mi, Ki / 4});
  auto indices = at::stack({at::bitwise_and(nib, 3), at::bitwise_right_shift(nib, 2)}, 2).view({Mi, Ki / 2});
  auto out = sparse24_mm<B>(values.contiguous(), indices.contiguous(), b, bias, odt);
  return transpose_result ? out.t().contiguous() : out;
}

// ---- the FFN backward's feature split, read from the compressed rows ------------------------
template <Backend B>
std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse24_transposed_split(const at::Tensor& values,
                                                                         const at::Tensor& indices,
                                                                         const at::Tensor& sparse_cols,
                                                                         const at::Tensor& dense_cols,
                                                                         c10::string_view algo,
                                                                         bool range_check) {
  const char* op = "sp24.sparse24_transposed_split";
  check_compressed(op, values, indices);
  const int algo_id = parse_algo(op, algo);
  const auto T = values.sym_size(0);
  SP24_CHECK(T % 4 == 0, op, ": values.size(0) (the tokens, the 2:4 direction) must be a multiple of 4, got ", T,
             "; pad the rows with zeros to a multiple of 4");
  check_columns(op, "sparse_cols", sparse_cols, "values", values);
  check_columns(op, "dense_cols", dense_cols, "values", values);
  const auto Cs = sparse_cols.sym_size(0), Cd = dense_cols.sym_size(0);
  auto tvalues = at::empty_symint({Cs, T / 2}, values.options());
  auto tindices = at::empty_symint({Cs, T / 2}, values.options().dtype(at::kByte));
  auto dense_t = at::empty_symint({Cd, T}, values.options());
  if constexpr (B != Backend::kMeta) {
    const int64_t F = values.size(1) * 2;
    auto sc = sparse_cols.contiguous(), dc = dense_cols.contiguous();
    // CPU and CUDA alike, unless the caller vouches for the lists (check_columns=False): then CUDA
    // skips the check, which would cost a host sync per call in every FFN backward (and break CUDA
    // graph capture); the CPU, where it is free, checks anyway. An empty feature axis with ids is
    // always checked (and refused): the kernels' clamp into [0, F) needs F > 0.
    if (range_check || B == Backend::kCPU || (F == 0 && sc.numel() + dc.numel() > 0))
      check_columns_range(op, {{"sparse_cols", &sc}, {"dense_cols", &dc}}, F);
    TransposedSplit24Params p;
    p.values = values.data_ptr();
    p.indices = indices.data_ptr<uint8_t>();
    p.sparse_cols = sc.data_ptr<int64_t>();
    p.dense_cols = dc.data_ptr<int64_t>();
    p.tvalues = tvalues.data_ptr();
    p.tindices = tindices.data_ptr<uint8_t>();
    p.dense_t = dense_t.data_ptr();
    p.T = values.size(0);
    p.F = F;
    p.Cs = sc.numel();
    p.Cd = dc.numel();
    p.algo = algo_id;
    p.dtype = to_dtype(values.scalar_type());
    if (p.T == 0 || p.Cs + p.Cd == 0) return {tvalues, tindices, dense_t};
    if constexpr (B == Backend::kCPU) transposed_split24_cpu(p);
#ifdef SP24_WITH_CUDA
    if constexpr (B == Backend::kCUDA) {
      c10::cuda::CUDAGuard guard(values.device());
      // p.F > 0: check_columns_range refused any column of an empty A. The two feature -> output-row
      // maps (stream-ordered: freeing after the launch is safe).
      auto ws = at::empty({2 * p.F}, values.options().dtype(at::kInt));
      p.workspace = ws.data_ptr<int32_t>();
      transposed_split24_cuda(p, current_stream());
    }
#endif
  }
  return {tvalues, tindices, dense_t};
}

}  // namespace

#define SP24_REGISTER_ALL(B)                                                        \
  m.impl("sparsify24", &sparsify24<B>);                                             \
  m.impl("sparsify24_transposed", &sparsify24_transposed<B>);                       \
  m.impl("sparse24_apply", &sparse24_apply<B>);                                     \
  m.impl("sparse24_apply_relu2_backward", &sparse24_apply_relu2_backward<B>);       \
  m.impl("sparse24_to_dense", &sparse24_to_dense<B>);                               \
  m.impl("sparse24_mm", &sparse24_mm<B>);                                           \
  m.impl("sparse24_cslt_compress", &sparse24_cslt_compress<B>);                     \
  m.impl("sparse24_cslt_mm", &sparse24_cslt_mm<B>);                                 \
  m.impl("sparsify24_cslt", &sparsify24_cslt<B>);                                   \
  m.impl("sparse24_transposed_split", &sparse24_transposed_split<B>);

TORCH_LIBRARY_IMPL(sp24, CPU, m) { SP24_REGISTER_ALL(Backend::kCPU) }
TORCH_LIBRARY_IMPL(sp24, Meta, m) { SP24_REGISTER_ALL(Backend::kMeta) }
#ifdef SP24_WITH_CUDA
TORCH_LIBRARY_IMPL(sp24, CUDA, m) { SP24_REGISTER_ALL(Backend::kCUDA) }
#endif

}  // namespace sp24
