// Every sp24 op schema, in one place. Kernels: sparse24_ops.cpp (CPU, Meta, CUDA glue).
// Semantics: python/sp24/reference.py.
#include <torch/library.h>

TORCH_LIBRARY(sp24, m) {
  // Row-wise 2:4 of x (M, K): (values (M, K/2), indices (M, K/2) uint8, counts).
  // activation: None or "relu2" (selection on relu(x)^2). counts: int32 (K,) non-zeros per column
  // of the activated input before sparsification when with_counts, else an empty tensor.
  m.def("sparsify24(Tensor x, str algo=\"largest\", str? activation=None, bool with_counts=False)"
        " -> (Tensor values, Tensor indices, Tensor counts)");
  // 2:4 along the rows of x (T, N) of x[:, columns].T (or x.T): (values (C, T/2), indices (C, T/2)).
  m.def("sparsify24_transposed(Tensor x, str algo=\"largest_abs\", Tensor? columns=None)"
        " -> (Tensor values, Tensor indices)");
  // x (M, K) at the positions of a 2:4 pattern: values (M, K/2).
  m.def("sparse24_apply(Tensor x, Tensor indices) -> Tensor");
  // Squared-ReLU backward on a 2:4 pattern: grad * 2*sqrt(y2) at the kept positions, from the
  // compressed Y2 = relu(Y1)^2 (its values and indices): values (M, K/2).
  m.def("sparse24_apply_relu2_backward(Tensor grad, Tensor y2_values, Tensor indices) -> Tensor");
  // Exact decompression: (M, K) with zeros at the dropped positions.
  m.def("sparse24_to_dense(Tensor values, Tensor indices) -> Tensor");
  // A @ b (+ bias) for a 2:4 A (M, K) given as values/indices and a dense b (K, N); fp32
  // accumulation; result (M, N) in out_dtype (default: A's dtype).
  m.def("sparse24_mm(Tensor values, Tensor indices, Tensor b, Tensor? bias=None,"
        " ScalarType? out_dtype=None) -> Tensor");
  // GEMM-ready buffer of a 2:4 A (M, K) (fp16/bf16, M and K multiples of 16): 1-D uint8, device-
  // specific (cuSPARSELt's layout on CUDA, sp24's packing on CPU), M*K/2*elem + M*K/8 bytes.
  m.def("sparse24_cslt_compress(Tensor values, Tensor indices) -> Tensor");
  // sparsify24 then sparse24_cslt_compress, in one op (one kernel on CUDA where checked, see
  // sparse24_ops.cpp): (compressed, indices, counts); compressed's first M*K/2 elements are the values.
  m.def("sparsify24_cslt(Tensor x, str algo=\"largest\", str? activation=None, bool with_counts=False)"
        " -> (Tensor compressed, Tensor indices, Tensor counts)");
  // A @ b (+ bias) from that buffer: (m, N), or its transpose (N, m) when transpose_result.
  // out_dtype: b.dtype or None (cuSPARSELt pairs 16-bit inputs only with their own type).
  // identity: the CPU int64 (8,) tensor made with the buffer (sp24/cslt_identity.h); when given,
  // a buffer of another layout, (m, k), dtype, cuSPARSELt version or GPU architecture is refused.
  m.def("sparse24_cslt_mm(Tensor compressed, SymInt m, SymInt k, Tensor b, Tensor? bias=None,"
        " ScalarType? out_dtype=None, bool transpose_result=False, Tensor? identity=None) -> Tensor");
  // The FFN backward's feature split straight from a row-wise 2:4 A (T, F) given as
  // values/indices (T, F/2): (tvalues, tindices) = sparsify24_transposed(A, algo, sparse_cols)
  // (Cs, T/2) and dense_t = A[:, dense_cols].T (Cd, T), without materialising the dense A.
  // check_columns=False skips the column range check where it costs a host sync (CUDA): for sp24's
  // own feature split, a permutation of range(F) by construction; the CUDA kernel still clamps ids.
  m.def("sparse24_transposed_split(Tensor values, Tensor indices, Tensor sparse_cols, Tensor dense_cols,"
        " str algo=\"largest_abs\", bool check_columns=True) -> (Tensor tvalues, Tensor tindices, Tensor dense_t)");
  // FP8 (e4m3) 2:4 path (semantics: python/sp24/reference_fp8.py). sparsify24 of x, its kept
  // values quantised per row: (values (M, K/2) float8_e4m3fn, indices (M, K/2) uint8, scales (M,)
  // fp32 = amax / 448 of the row's kept values (1 for an all-zero row, NaN for a non-finite one),
  // counts as sparsify24's).
  m.def("sparsify24_fp8(Tensor x, str algo=\"largest\", str? activation=None, bool with_counts=False)"
        " -> (Tensor values, Tensor indices, Tensor scales, Tensor counts)");
  // Row-wise e4m3 quantisation of a dense x (M, n): (q (M, n) float8_e4m3fn, scales (M,) fp32), the
  // rule of sparsify24_fp8's values.
  m.def("quantize_rows_fp8(Tensor x) -> (Tensor q, Tensor scales)");
  // sparsify24_transposed (2:4 along the tokens of x[:, columns].T), its kept values quantised per
  // row of the transposed operand: (values (C, T/2) float8_e4m3fn, indices (C, T/2), scales (C,)).
  m.def("sparsify24_transposed_fp8(Tensor x, str algo=\"largest_abs\", Tensor? columns=None)"
        " -> (Tensor values, Tensor indices, Tensor scales)");
  // (A * a_scales[:, None]) @ (b * b_scales[None, :]) (+ bias), bf16 (M, N), for the 2:4 e4m3 A (M, K)
  // and b (K, N) e4m3 K-major; b_scales (N,) or (1,). validate_scales: refuse a non-finite or
  // non-positive scale (one host sync on CUDA).
  m.def("sparse24_fp8_mm(Tensor values, Tensor indices, Tensor a_scales, Tensor b, Tensor b_scales,"
        " Tensor? bias=None, bool validate_scales=True) -> Tensor");
}
