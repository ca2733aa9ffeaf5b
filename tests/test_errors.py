"""Every bad input of docs/DESIGN.md ('Bad input and failure') raises a Python-visible error that names the op, the rule and
the actual value (the exact texts are part of the contract)."""

import re

import pytest
import torch

from helpers import sp24

ops = torch.ops.sp24
x8 = torch.randn(4, 8)
idx = ops.sparsify24(x8, "largest", None, False)[1]
vals = ops.sparsify24(x8, "largest", None, False)[0]

CASES = [
    # (callable, exception type, exact message fragment)
    (lambda: ops.sparsify24(torch.randn(3, 30), "largest", None, False), ValueError,
     "sp24.sparsify24: x.size(-1) must be a multiple of 4, got 30; pad the last dim with zeros to a multiple of 4"),
    (lambda: ops.sparsify24(torch.randn(2, 3, 4), "largest", None, False), ValueError,
     "sp24.sparsify24: x must be 2-D, got a 3-D tensor of shape [2, 3, 4]"),
    (lambda: ops.sparsify24(torch.randn(4, 8).double(), "largest", None, False), TypeError,
     "sp24.sparsify24: x.dtype must be torch.float16, torch.bfloat16 or torch.float32, got torch.float64"),
    (lambda: ops.sparsify24(torch.ones(4, 8, dtype=torch.int32), "largest", None, False), TypeError,
     "got torch.int32"),
    (lambda: ops.sparsify24(x8, "smallest", None, False), ValueError,
     "sp24.sparsify24: algo must be 'largest' or 'largest_abs', got 'smallest'"),
    (lambda: ops.sparsify24(x8, "largest", "gelu", False), ValueError,
     "sp24.sparsify24: activation must be None or 'relu2', got 'gelu'"),
    (lambda: ops.sparsify24(torch.randn(8, 4).t(), "largest", None, False), ValueError,
     "sp24.sparsify24: x must have stride 1 along its last dim, got strides [1, 4]; call x.contiguous() first"),
    (lambda: ops.sparsify24_transposed(torch.randn(6, 8), "largest_abs", None), ValueError,
     "sp24.sparsify24_transposed: x.size(0) (the tokens, the 2:4 direction) must be a multiple of 4, got 6"),
    (lambda: ops.sparsify24_transposed(x8, "largest_abs", torch.tensor([0, 8])), ValueError,
     "sp24.sparsify24_transposed: columns must lie in [0, 8), got values in [0, 8]"),
    (lambda: sp24.sparsify24_transposed(x8, columns=[-1, 2]), ValueError,
     "sp24.sparsify24_transposed: columns must lie in [0, 8), got values in [-1, 2]"),
    (lambda: ops.sparsify24_transposed(x8, "largest_abs", torch.tensor([0, 1], dtype=torch.int32)), ValueError,
     "sp24.sparsify24_transposed: columns must be int64, got torch.int32"),
    (lambda: ops.sparsify24_transposed(x8, "largest_abs", torch.zeros(2, 2, dtype=torch.int64)), ValueError,
     "sp24.sparsify24_transposed: columns must be 1-D, got a 2-D tensor of shape [2, 2]"),
    (lambda: ops.sparse24_apply(torch.randn(4, 12), idx), ValueError,
     "sp24.sparse24_apply: indices must have shape (M, K/2) = (4, 6) for x of shape [4, 12], got [4, 4]"),
    (lambda: ops.sparse24_apply(x8, idx.to(torch.int64)), TypeError,
     "sp24.sparse24_apply: indices.dtype must be torch.uint8, got torch.int64"),
    (lambda: ops.sparse24_apply(x8, torch.zeros(4, 8, dtype=torch.uint8)[:, ::2]), ValueError,
     "sp24.sparse24_apply: indices must be contiguous, got strides [8, 2]; call indices.contiguous() first"),
    (lambda: ops.sparse24_apply(x8, idx.to("meta")), ValueError,
     "sp24.sparse24_apply: x and indices must be on the same device, got cpu and meta"),
    (lambda: ops.sparse24_apply_relu2_backward(x8, vals.half(), idx), ValueError,
     "sp24.sparse24_apply_relu2_backward: y2_values.dtype must equal grad.dtype (torch.float32), got torch.float16"),
    (lambda: ops.sparse24_apply_relu2_backward(x8, vals[:2], idx), ValueError,
     "sp24.sparse24_apply_relu2_backward: y2_values and indices must have the same shape, got [2, 4] and [4, 4]"),
    (lambda: ops.sparse24_to_dense(vals, idx[:, :2].contiguous()), ValueError,
     "sp24.sparse24_to_dense: values and indices must have the same shape, got [4, 4] and [4, 2]"),
    (lambda: ops.sparse24_to_dense(vals, torch.zeros(4, 3, dtype=torch.uint8)), ValueError,
     "sp24.sparse24_to_dense: indices.size(1) must be even (K/2 for a 2:4 matrix of K columns), got 3"),
    (lambda: ops.sparse24_mm(vals, idx, torch.randn(6, 2), None, None), ValueError,
     "sp24.sparse24_mm: shapes do not match for A @ b: A is (4, 8) and b is [6, 2]; b.size(0) must be 8"),
    (lambda: ops.sparse24_mm(vals, idx, torch.randn(8, 2).half(), None, None), ValueError,
     "sp24.sparse24_mm: b.dtype must equal the sparse operand's dtype (torch.float32), got torch.float16"),
    (lambda: ops.sparse24_mm(vals, idx, torch.randn(8, 2), torch.randn(3), None), ValueError,
     "sp24.sparse24_mm: bias must have shape (2,), got [3]"),
    (lambda: ops.sparse24_mm(vals, idx, torch.randn(8, 2), None, torch.int32), ValueError,
     "sp24.sparse24_mm: out_dtype must be torch.float16, torch.bfloat16 or torch.float32, got torch.int32"),
    (lambda: ops.sparse24_mm(vals, idx, torch.randn(8, 2, device="meta"), None, None), ValueError,
     "sp24.sparse24_mm: values and b must be on the same device, got cpu and meta"),
    (lambda: sp24.mm(torch.randn(4, 8), torch.randn(8, 2)), TypeError,
     "sp24.mm: a must be a sp24.Sp24Tensor (from sp24.sparsify24), got Tensor"),
    (lambda: sp24.sparsify24([[1.0, 2.0, 3.0, 4.0]]), TypeError,
     "sp24.sparsify24: x must be a torch.Tensor, got list"),
    (lambda: sp24.Sp24Tensor(vals, idx[:2]), ValueError,
     "sp24.Sp24Tensor: values and indices must have the same shape (..., K/2), at least 1-D, got (4, 4) and (2, 4)"),
    (lambda: torch.randn(2, 4) @ sp24.sparsify24(x8), TypeError,
     "sp24.Sp24Tensor: dense @ Sp24Tensor is not supported"),
    # sparse24_transposed_split (vals/idx: a (4, 8) 2:4 matrix)
    (lambda: ops.sparse24_transposed_split(vals[:3].contiguous(), idx[:3].contiguous(), torch.tensor([0]),
                                           torch.tensor([1]), "largest_abs"), ValueError,
     "sp24.sparse24_transposed_split: values.size(0) (the tokens, the 2:4 direction) must be a multiple of 4, "
     "got 3; pad the rows with zeros to a multiple of 4"),
    (lambda: ops.sparse24_transposed_split(vals, idx, torch.tensor([0, 8]), torch.tensor([1]), "largest_abs"),
     ValueError, "sp24.sparse24_transposed_split: sparse_cols must lie in [0, 8), got values in [0, 8]"),
    (lambda: ops.sparse24_transposed_split(vals, idx, torch.tensor([0]), torch.tensor([-1, 2]), "largest_abs"),
     ValueError, "sp24.sparse24_transposed_split: dense_cols must lie in [0, 8), got values in [-1, 2]"),
    (lambda: ops.sparse24_transposed_split(vals, idx, torch.tensor([0], dtype=torch.int32), torch.tensor([1]),
                                           "largest_abs"), ValueError,
     "sp24.sparse24_transposed_split: sparse_cols must be int64, got torch.int32"),
    (lambda: ops.sparse24_transposed_split(vals, idx, torch.tensor([0]), torch.zeros(2, 2, dtype=torch.int64),
                                           "largest_abs"), ValueError,
     "sp24.sparse24_transposed_split: dense_cols must be 1-D, got a 2-D tensor of shape [2, 2]"),
    (lambda: ops.sparse24_transposed_split(vals, idx, torch.tensor([0]), torch.tensor([1], device="meta"),
                                           "largest_abs"), ValueError,
     "sp24.sparse24_transposed_split: values and dense_cols must be on the same device, got cpu and meta"),
    (lambda: ops.sparse24_transposed_split(vals, idx, torch.tensor([0]), torch.tensor([1]), "smallest"), ValueError,
     "sp24.sparse24_transposed_split: algo must be 'largest' or 'largest_abs', got 'smallest'"),
    (lambda: ops.sparse24_transposed_split(vals.double(), idx, torch.tensor([0]), torch.tensor([1]), "largest_abs"),
     TypeError, "sp24.sparse24_transposed_split: values.dtype must be torch.float16, torch.bfloat16 or torch.float32, "
     "got torch.float64"),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_error_message(case):
    fn, exc, msg = CASES[case]
    with pytest.raises(exc, match=re.escape(msg)):
        fn()


def test_bad_inputs_fail_the_same_under_meta():
    with pytest.raises(TypeError, match=re.escape("sp24.sparsify24: x.dtype must be torch.float16")):
        ops.sparsify24(torch.empty(4, 8, dtype=torch.float64, device="meta"), "largest", None, False)
    with pytest.raises(ValueError, match=re.escape("sp24.sparse24_mm: shapes do not match")):
        ops.sparse24_mm(vals.to("meta"), idx.to("meta"), torch.empty(6, 2, device="meta"), None, None)


def test_stats_rejects_scalars():
    with pytest.raises(ValueError, match=re.escape("sp24.stats: x must have at least 1 dim")):
        sp24.stats(torch.tensor(1.0))
