// Input checks shared by every op. Each message names the op, the rule, the actual value and,
// where there is one, the remedy:  "sp24.sparsify24: x.size(-1) must be a multiple of 4, got 30".
// Sizes are read symbolically (sym_size) so the same checks run under FakeTensor/torch.compile.
#pragma once
#include <ATen/ATen.h>

#include <initializer_list>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "sp24/params.h"
#include "sp24/select.h"

#define SP24_CHECK(cond, ...) TORCH_CHECK_VALUE(cond, __VA_ARGS__)

namespace sp24 {

inline std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kDouble: return "torch.float64";
    case at::kByte: return "torch.uint8";
    case at::kChar: return "torch.int8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kBool: return "torch.bool";
    default: return std::string("torch.") + c10::toString(t);
  }
}

inline bool is_float_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

inline DType to_dtype(at::ScalarType t) {
  return t == at::kHalf ? DType::kFloat16 : t == at::kBFloat16 ? DType::kBFloat16 : DType::kFloat32;
}

inline void check_matrix(const char* op, const char* name, const at::Tensor& t) {
  SP24_CHECK(t.defined(), op, ": ", name, " is undefined");
  SP24_CHECK(t.dim() == 2, op, ": ", name, " must be 2-D, got a ", t.dim(), "-D tensor of shape ", t.sym_sizes());
}

inline void check_float_dtype(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(is_float_dtype(t.scalar_type()), op, ": ", name,
                   ".dtype must be torch.float16, torch.bfloat16 or torch.float32, got ", dtype_name(t.scalar_type()));
}

// Rows may be strided (a slice of a wider matrix), elements within a row must be adjacent.
inline void check_unit_col_stride(const char* op, const char* name, const at::Tensor& t) {
  SP24_CHECK(t.sym_numel() == 0 || t.sym_size(1) <= 1 || t.sym_stride(1) == 1, op, ": ", name,
             " must have stride 1 along its last dim, got strides ", t.sym_strides(), "; call ", name,
             ".contiguous() first");
}

inline void check_same_device(const char* op, const char* na, const at::Tensor& a, const char* nb, const at::Tensor& b) {
  SP24_CHECK(a.device() == b.device(), op, ": ", na, " and ", nb, " must be on the same device, got ", a.device(),
             " and ", b.device());
}

inline void check_indices(const char* op, const at::Tensor& indices) {
  check_matrix(op, "indices", indices);
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kByte, op, ": indices.dtype must be torch.uint8, got ",
                   dtype_name(indices.scalar_type()));
  SP24_CHECK(indices.is_contiguous(), op, ": indices must be contiguous, got strides ", indices.sym_strides(),
             "; call indices.contiguous() first");
  SP24_CHECK(indices.sym_size(1) % 2 == 0, op, ": indices.size(1) must be even (K/2 for a 2:4 matrix of K columns), got ",
             indices.sym_size(1));
}

inline void check_values(const char* op, const char* name, const at::Tensor& values, const at::Tensor& indices) {
  check_matrix(op, name, values);
  check_float_dtype(op, name, values);
  SP24_CHECK(values.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", values.sym_strides(),
             "; call ", name, ".contiguous() first");
  SP24_CHECK(values.sym_sizes() == indices.sym_sizes(), op, ": ", name, " and indices must have the same shape, got ",
             values.sym_sizes(), " and ", indices.sym_sizes());
}

// A 2:4 operand in the canonical form: values (M, K/2) and indices (M, K/2) uint8 on one device.
inline void check_compressed(const char* op, const at::Tensor& values, const at::Tensor& indices) {
  check_indices(op, indices);
  check_values(op, "values", values, indices);
  check_same_device(op, "values", values, "indices", indices);
}

// A column list: 1-D int64 on the device of `other` (named `other_name` in the message).
inline void check_columns(const char* op, const char* name, const at::Tensor& c, const char* other_name,
                          const at::Tensor& other) {
  SP24_CHECK(c.dim() == 1, op, ": ", name, " must be 1-D, got a ", c.dim(), "-D tensor of shape ", c.sym_sizes());
  SP24_CHECK(c.scalar_type() == at::kLong, op, ": ", name, " must be int64, got ", dtype_name(c.scalar_type()));
  // The CUDA column map (int32) and the duplicate-rows launch (one block per id, grid.x) are
  // 32-bit: every device accepts the same lists, so every device caps them (shape-only, no sync).
  SP24_CHECK(c.sym_size(0) <= 2147483647, op, ": ", name, " may hold at most 2147483647 ids, got ", c.sym_size(0));
  check_same_device(op, other_name, other, name, c);
}

// Column ids outside [0, n) would read outside the input: every device refuses them with the same
// words, here in the glue shared by the CPU and CUDA ops (the Meta/fake op has no values to check).
// One transfer for all the lists of an op: on CUDA that is one host sync per call, the price of
// raising like the CPU does (the kernels also clamp, so even unchecked ids never address memory
// outside the input).
inline void check_columns_range(const char* op, std::initializer_list<std::pair<const char*, const at::Tensor*>> lists,
                                int64_t n) {
  std::vector<at::Tensor> ends;
  for (const auto& [name, c] : lists) {
    if (c->numel() == 0) continue;
    auto [lo, hi] = at::aminmax(*c);
    ends.push_back(lo.reshape({1}));
    ends.push_back(hi.reshape({1}));
  }
  if (ends.empty()) return;
  const at::Tensor host = at::cat(ends).cpu();
  const int64_t* e = host.data_ptr<int64_t>();
  for (const auto& [name, c] : lists) {
    if (c->numel() == 0) continue;
    const int64_t lo = e[0], hi = e[1];
    e += 2;
    SP24_CHECK(lo >= 0 && hi < n, op, ": ", name, " must lie in [0, ", n, "), got values in [", lo, ", ", hi, "]");
  }
}

inline int parse_algo(const char* op, c10::string_view algo) {
  if (algo == "largest") return kLargest;
  if (algo == "largest_abs") return kLargestAbs;
  SP24_CHECK(false, op, ": algo must be 'largest' or 'largest_abs', got '", std::string(algo), "'");
  return 0;
}

inline bool parse_activation(const char* op, std::optional<c10::string_view> act) {
  if (!act.has_value()) return false;
  if (*act == "relu2") return true;
  SP24_CHECK(false, op, ": activation must be None or 'relu2', got '", std::string(*act), "'");
  return false;
}

}  // namespace sp24
