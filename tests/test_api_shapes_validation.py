"""sparsify24 on (..., K), Sp24Tensor.validate() and the SP24_VALIDATE debug mode, and the argument
checks of the public API at the point of entry."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import DEVICES, assert_bits_equal, special, tie_free, sp24
from sp24 import _ops, reference


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 3, 16), (5, 1, 2, 8), (12,), (0, 4, 8), (3, 0, 4)])
def test_sparsify24_takes_leading_dims(device, shape):
    x = special(int(np.prod(shape[:-1])), shape[-1], torch.bfloat16, seed=30, device=device).reshape(shape)
    s = sp24.sparsify24(x, "largest_abs", "relu2")
    flat = x.reshape(-1, shape[-1]).cpu()
    rv, ri, _ = reference.sparsify24(flat, "largest_abs", "relu2")
    half = (*shape[:-1], shape[-1] // 2)
    assert s.shape == torch.Size(shape) and s.dim() == len(shape)
    assert s.values().shape == half and s.indices().shape == half
    assert_bits_equal(s.values().cpu().reshape(-1, shape[-1] // 2), rv)
    assert torch.equal(s.indices().cpu().reshape(-1, shape[-1] // 2), ri)
    assert_bits_equal(s.to_dense().cpu(), reference.to_dense(rv, ri).reshape(shape))
    assert torch.equal(s.mask().cpu(), reference.indices_to_mask(ri).reshape(shape))
    b = torch.randint(-2, 3, (shape[-1], 3)).to(torch.bfloat16).to(device)
    out = s @ b
    assert out.shape == (*shape[:-1], 3)
    assert_bits_equal(out.cpu(), reference.mm(rv, ri, b.cpu()).reshape(*shape[:-1], 3))
    moved = s.to("cpu", dtype=torch.float32)
    assert moved.shape == s.shape and moved.values().shape == half


def test_sp24tensor_from_nd_values_and_indices():
    s = sp24.sparsify24(tie_free(6, 8, torch.float32, seed=31))
    t = sp24.Sp24Tensor(s.values().reshape(2, 3, 4), s.indices().reshape(2, 3, 4))
    assert t.shape == (2, 3, 8)
    assert torch.equal(t.to_dense(), s.to_dense().reshape(2, 3, 8))


def test_sparsify24_rejects_a_scalar():
    with pytest.raises(ValueError, match=re.escape("sp24.sparsify24: x must have shape (..., K), got a 0-D tensor")):
        sp24.sparsify24(torch.tensor(1.0))


def test_defaults_are_documented_side_by_side():
    # algo: "largest" in sparsify24, "largest_abs" in sparsify24_transposed; relu2_ffn sparse=True
    # vs ReLU2FFN sparse=False -- each docstring names the other default
    assert "``\"largest_abs\"`` in :func:`sparsify24_transposed`" in sp24.sparsify24.__doc__
    assert "``\"largest\"`` in :func:`sparsify24`" in sp24.sparsify24_transposed.__doc__
    assert "sp24.nn.ReLU2FFN" in sp24.relu2_ffn.__doc__ and "sparse=False" in sp24.relu2_ffn.__doc__


MALFORMED = [
    ("position > 3", [[0, 4, 1, 2]], "row 0, group 0 (columns 0..3) has [0, 4]"),
    ("duplicate", [[0, 1, 2, 2]], "row 0, group 1 (columns 4..7) has [2, 2]"),
    ("decreasing", [[0, 1, 1, 2], [3, 0, 1, 2]], "row 1, group 0 (columns 0..3) has [3, 0]"),
    ("all 0xff", [[255, 255, 0, 1]], "row 0, group 0 (columns 0..3) has [255, 255]"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(len(MALFORMED)))
def test_malformed_indices_are_caught(device, case):
    _, idx, where = MALFORMED[case]
    indices = torch.tensor(idx, dtype=torch.uint8, device=device)
    values = torch.ones(indices.shape, device=device)
    with pytest.raises(ValueError, match=re.escape(f"sp24.Sp24Tensor.validate: malformed indices") + ".*" +
                       re.escape(where)):
        sp24.Sp24Tensor(values, indices)
    s = sp24.Sp24Tensor(values, indices, validate=False)  # opt out: memory-safe, wrong results
    with pytest.raises(ValueError, match=re.escape(where)):
        s.validate()


def test_well_formed_indices_pass():
    for algo in ("largest", "largest_abs"):
        s = sp24.sparsify24(special(16, 32, torch.float16, seed=32), algo)
        assert sp24.Sp24Tensor(s.values(), s.indices()).validate() is not None
    every_pair = torch.tensor([[0, 1, 0, 2, 0, 3, 1, 2, 1, 3, 2, 3]], dtype=torch.uint8)
    sp24.Sp24Tensor(torch.ones(1, 12), every_pair)
    sp24.Sp24Tensor(torch.ones(0, 4), torch.zeros(0, 4, dtype=torch.uint8))


def test_debug_mode_checks_the_op_wrappers(monkeypatch):
    bad = torch.tensor([[1, 1]], dtype=torch.uint8)
    _ops.to_dense(torch.ones(1, 2), bad)  # off by default: one pass per call is not free
    monkeypatch.setattr(_ops, "VALIDATE", True)
    for call in (lambda: _ops.to_dense(torch.ones(1, 2), bad),
                 lambda: _ops.apply(torch.ones(1, 4), bad),
                 lambda: _ops.mm(torch.ones(1, 2), bad, torch.ones(4, 1))):
        with pytest.raises(ValueError, match=r"malformed indices.*row 0, group 0 \(columns 0..3\) has \[1, 1\]"):
            call()


def test_debug_mode_from_the_environment():
    code = "import sp24, sp24._ops as o; print(o.VALIDATE)"
    for value, want in (("1", "True"), ("0", "False")):
        env = dict(os.environ, SP24_VALIDATE=value)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0 and r.stdout.strip() == want, r.stderr


@pytest.mark.parametrize("columns,bad", [([0.5, 3.9], "0.5 (float) at position 0"),
                                          ([1, True], "True (bool) at position 1"),
                                          ([1, "2"], "'2' (str) at position 1")])
def test_columns_must_be_integers(columns, bad):
    with pytest.raises(TypeError, match=re.escape(f"sp24.sparsify24_transposed: columns must be integers, got {bad}")):
        sp24.sparsify24_transposed(torch.randn(4, 8), columns=columns)


def test_columns_accept_python_numpy_and_tensor_integers():
    x = tie_free(8, 8, torch.float32, seed=33)
    want = sp24.sparsify24_transposed(x, columns=torch.tensor([3, 0])).to_dense()
    for cols in ([3, 0], (3, 0), np.array([3, 0]), [np.int32(3), torch.tensor(0)],
                 torch.tensor([3, 0], dtype=torch.int32)):
        assert torch.equal(sp24.sparsify24_transposed(x, columns=cols).to_dense(), want)


def test_stats_names_itself_and_handles_empty():
    for dt in (torch.float64, torch.int32):
        with pytest.raises(TypeError, match=re.escape(
                f"sp24.stats: x.dtype must be torch.float16, torch.bfloat16 or torch.float32, got {dt}")):
            sp24.stats(torch.ones(4, 8, dtype=dt))
    for shape in ((0,), (0, 8), (4, 0), (2, 0, 8), (0, 0, 0)):
        st = sp24.stats(torch.empty(shape))
        assert st["numel"] == 0 and st["zero_fraction"] == 0.0 and st["drop_rowwise"] == 0.0, shape


@pytest.mark.parametrize("name", ["sparsify24", "sparsify24_transposed", "mm", "stats", "relu2_ffn", "Sp24Tensor",
                                  "Sp24Tensor.validate", "Sp24Tensor.to_dense", "autograd.relu2_grad"])
def test_docstring_examples_run(name):
    import doctest

    obj = sp24
    for part in name.split("."):
        obj = getattr(obj, part)
    tests = doctest.DocTestFinder(recurse=False).find(obj, name, globs={"torch": torch, "sp24": sp24})
    assert tests and tests[0].examples, f"{name} has no Example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for t in tests:
        assert runner.run(t).failed == 0, name


# ---- bad arguments a new user may pass: each error names the op, the rule and the value ------
def test_wrong_argument_types_name_the_op():
    x = torch.randn(4, 8)
    with pytest.raises(TypeError, match=r"sp24.sparsify24: activation must be one of None, 'relu2', got True \(bool\)"):
        sp24.sparsify24(x, "largest", True)
    with pytest.raises(TypeError, match=r"sp24.sparsify24: algo must be one of 'largest', 'largest_abs', got 3"):
        sp24.sparsify24(x, 3)
    with pytest.raises(TypeError, match=r"sp24.mm: out_dtype must be None or a torch.dtype .*got 'float16'"):
        sp24.mm(sp24.sparsify24(x), torch.randn(8, 4), out_dtype="float16")
    with pytest.raises(ValueError, match=r"sp24.sparsify24_transposed: columns must be on x's device \(cpu\) or the "
                                         r"CPU, got a meta tensor"):
        sp24.sparsify24_transposed(x, columns=torch.tensor([0, 1], device="meta"))
    with pytest.raises(TypeError, match=r"sp24.Sp24Tensor: values.dtype must be torch.float16, torch.bfloat16 or "
                                        r"torch.float32, got torch.int32"):
        sp24.Sp24Tensor(torch.ones(1, 2, dtype=torch.int32), torch.tensor([[0, 1]], dtype=torch.uint8))


def test_to_takes_a_dtype_first_like_tensor_to():
    s = sp24.sparsify24(torch.randn(4, 8))
    h = s.to(torch.float16)
    assert h.dtype == torch.float16 and torch.equal(h.indices(), s.indices())
    assert torch.equal(h.values(), s.values().half())
