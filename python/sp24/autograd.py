"""Autograd for the sp24 ops: `torch.library.register_autograd` on the raw `torch.ops.sp24` ops and
the straight-through ("ste") gradient of `sp24.sparsify24`.

Gradients of the raw ops (every rounding is one rounding of an fp32 result, like the forward):

    sparsify24 -> values        dx = to_dense(dvalues, indices)            (the forward's pattern)
                   activation="relu2": dx = to_dense(dvalues * 2*relu(x), indices), in fp32
    sparsify24_transposed       dx[:, columns] += to_dense(dvalues, indices).T
    sparse24_apply              dx = to_dense(dvalues, indices)
    sparse24_apply_relu2_backward   d grad = to_dense(dvalues * 2*sqrt(y2_values), indices)
    sparse24_to_dense           dvalues = apply(dout, indices)
    sparse24_mm                 dvalues = apply(dout @ b.T, indices), db = A.T @ dout,
                                dbias = dout.sum(0); dense fp32 GEMMs (correct, not fast)

Not differentiable, and an error as soon as a gradient would be required (at the forward call,
never a silent None): indices and counts (integers), sparse24_apply_relu2_backward w.r.t.
y2_values, sparse24_transposed_split, and the cuSPARSELt buffer ops (sparse24_cslt_compress,
sparsify24_cslt, sparse24_cslt_mm): the buffer is opaque bytes that keep no pattern for a backward.
Use sp24.sparsify24 / sp24.mm / sparse24_mm, which are differentiable. The FP8 ops (sparsify24_fp8,
sparsify24_transposed_fp8, quantize_rows_fp8, sparse24_fp8_mm) likewise: relu2_ffn(fp8=True) is the
differentiable FP8 path.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import reference

__all__ = ["GRADIENTS", "relu2_grad"]

_ops = torch.ops.sp24

# sp24.sparsify24(gradient=...): "24sparse" masks the gradient with the forward pattern; "ste"
# passes it straight through the 2:4 selection. "24dense" is accepted for xformers users: it is
# the same gradient as "24sparse" (sp24 always returns x.grad as a dense tensor).
GRADIENTS = ("24sparse", "24dense", "ste")


def relu2_grad(grad: Tensor, x: Tensor) -> Tensor:
    r"""The gradient through Squared-ReLU: ``grad * 2*relu(x)``, in fp32, rounded once.

    The backward of ``activation="relu2"`` in :func:`sp24.sparsify24` (on the kept positions).
    A NaN it makes (a NaN in ``grad`` or ``x``, or ``0 * inf``) is the canonical NaN of the dtype
    (``sp24.reference.NAN_BITS``), as in every other relu2 backward of sp24.

    Args:
        grad (Tensor): the incoming gradient, float32, float16 or bfloat16.
        x (Tensor): the pre-activation, broadcastable to ``grad``.

    Returns:
        Tensor: ``grad.dtype``, the shape of ``grad * x``.

    Example::

        >>> sp24.autograd.relu2_grad(torch.tensor([1.0, 1.0]), torch.tensor([-2.0, 3.0]))
        tensor([0., 6.])
    """
    return reference.canonical_nan((grad.float() * (2.0 * torch.relu(x.float()))).to(grad.dtype))


def check_func_transform(op: str, *tensors) -> None:
    """Raise NotImplementedError when a torch.func gradient transform (grad, vjp, jacrev, jvp, ...)
    would differentiate an sp24 op: their autograd is registered with
    torch.library.register_autograd, which torch.func does not support (torch's own error only
    says "it must override the setup_context staticmethod"). torch.func.vmap alone works."""
    if torch.compiler.is_compiling() or torch._C._functorch.maybe_current_level() is None:
        return
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)):
        return
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    grads = {torch._C._functorch.TransformType.Grad, torch._C._functorch.TransformType.Jvp}
    if any(i.key() in grads for i in retrieve_all_functorch_interpreters()):
        raise NotImplementedError(
            f"{op}: torch.func gradient transforms (grad, vjp, jacrev, jvp) are not supported by the sp24 ops' "
            "autograd (torch.library.register_autograd); use torch.autograd (loss.backward() or "
            "torch.autograd.grad). sp24.relu2_ffn supports torch.func.grad; torch.func.vmap alone works")


def _refuse(op: str, what: str, remedy: str):
    def setup_context(ctx, inputs, output):
        raise RuntimeError(f"sp24.{op}: not differentiable w.r.t. {what}, but a gradient is required "
                           f"(an input has requires_grad=True); {remedy}")
    return setup_context


def _no_backward(ctx, *grads):  # never reached: setup_context refuses first
    raise RuntimeError("sp24: this op is not differentiable")


# ---- sparsify24 --------------------------------------------------------------------------------
def _sparsify24_setup(ctx, inputs, output):
    x, _algo, activation, _with_counts = inputs
    ctx.activation = activation
    ctx.save_for_backward(output[1], x if activation == "relu2" else None)


def _sparsify24_backward(ctx, dvalues, _dindices, _dcounts):
    indices, x = ctx.saved_tensors
    if dvalues is None or not ctx.needs_input_grad[0]:
        return None, None, None, None
    dvalues = dvalues.contiguous()
    if ctx.activation == "relu2":
        dvalues = relu2_grad(dvalues, _ops.sparse24_apply(x, indices))
    return _ops.sparse24_to_dense(dvalues, indices), None, None, None


# ---- sparsify24_transposed ---------------------------------------------------------------------
def _transposed_setup(ctx, inputs, output):
    x, _algo, columns = inputs
    ctx.x_shape = x.shape
    ctx.save_for_backward(output[1], columns)


def _transposed_backward(ctx, dvalues, _dindices):
    indices, columns = ctx.saved_tensors
    if dvalues is None or not ctx.needs_input_grad[0]:
        return None, None, None
    dxt = _ops.sparse24_to_dense(dvalues.contiguous(), indices)  # (C, T)
    if columns is None:
        return dxt.t(), None, None
    # a column given twice receives both gradients
    dx = dxt.new_zeros(ctx.x_shape).index_add_(1, columns, dxt.t())
    return dx, None, None


# ---- apply / apply_relu2_backward / to_dense -------------------------------------------------------
def _apply_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _apply_backward(ctx, dvalues):
    (indices,) = ctx.saved_tensors
    return _ops.sparse24_to_dense(dvalues.contiguous(), indices), None


def _apply_relu2_setup(ctx, inputs, output):
    grad, y2_values, indices = inputs
    if y2_values.requires_grad:
        raise RuntimeError("sp24.sparse24_apply_relu2_backward: not differentiable w.r.t. y2_values, but "
                           "y2_values.requires_grad=True; pass y2_values.detach() (it is a saved activation) "
                           "or differentiate sp24.sparsify24(x, activation='relu2') instead")
    ctx.save_for_backward(y2_values, indices)


def _apply_relu2_backward(ctx, dvalues):
    y2_values, indices = ctx.saved_tensors
    dense = _ops.sparse24_to_dense(dvalues.contiguous(), indices)
    return _ops.sparse24_to_dense(_ops.sparse24_apply_relu2_backward(dense, y2_values, indices), indices), None, None


def _to_dense_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _to_dense_backward(ctx, dout):
    (indices,) = ctx.saved_tensors
    return _ops.sparse24_apply(dout.contiguous(), indices), None


# ---- mm --------------------------------------------------------------------------------------
def _mm_grads(dout: Tensor, values: Tensor, indices: Tensor, b: Tensor, bias: Optional[Tensor],
                needs: tuple) -> tuple:
    """(dvalues, db, dbias) of out = A @ b + bias for A = to_dense(values, indices): fp32 products,
    one rounding each; None where `needs` (values, b, bias) is False."""
    dvalues = db = dbias = None
    g = dout.float()
    if needs[0]:
        dvalues = _ops.sparse24_apply((g @ b.float().t()).to(values.dtype).contiguous(), indices)
    if needs[1]:
        db = (_ops.sparse24_to_dense(values, indices).float().t() @ g).to(b.dtype)
    if needs[2] and bias is not None:
        dbias = g.sum(0).to(bias.dtype)
    return dvalues, db, dbias


def _mm_setup(ctx, inputs, output):
    values, indices, b, bias, _out_dtype = inputs
    # needs_input_grad lists only the tensor arguments given, so record what needs a gradient here
    ctx.needs = (values.requires_grad, b.requires_grad, bias is not None and bias.requires_grad)
    ctx.bias_dtype = bias.dtype if bias is not None else None
    ctx.save_for_backward(values, indices, b)


def _mm_backward(ctx, dout):
    values, indices, b = ctx.saved_tensors
    need_v, need_b, need_bias = ctx.needs
    dvalues, db, _ = _mm_grads(dout, values, indices, b, None, (need_v, need_b, False))
    dbias = dout.float().sum(0).to(ctx.bias_dtype) if need_bias else None
    return dvalues, None, db, dbias, None


# ---- registration --------------------------------------------------------------------------------
_CSLT_REMEDY = ("the GEMM-ready buffer is opaque bytes that keep no pattern for a backward; use sp24.sparsify24 "
                "and sp24.mm (or sparse24_mm), which are differentiable, or detach() the inputs")


_FP8_REMEDY = ("the FP8 ops are forward building blocks (e4m3 values and scales have no gradient); "
               "sp24.relu2_ffn(..., fp8=True) differentiates the FFN (its backward in bf16), or detach() the inputs")


def _register() -> None:
    reg = torch.library.register_autograd
    reg("sp24::sparsify24", _sparsify24_backward, setup_context=_sparsify24_setup)
    reg("sp24::sparsify24_transposed", _transposed_backward, setup_context=_transposed_setup)
    reg("sp24::sparse24_apply", _apply_backward, setup_context=_apply_setup)
    reg("sp24::sparse24_apply_relu2_backward", _apply_relu2_backward, setup_context=_apply_relu2_setup)
    reg("sp24::sparse24_to_dense", _to_dense_backward, setup_context=_to_dense_setup)
    reg("sp24::sparse24_mm", _mm_backward, setup_context=_mm_setup)
    reg("sp24::sparse24_transposed_split", _no_backward, setup_context=_refuse(
        "sparse24_transposed_split", "values", "it is a building block of relu2_ffn's backward; detach() values, "
        "or differentiate sp24.sparsify24_transposed(sp24.sparsify24(x).to_dense(), columns=...) instead"))
    reg("sp24::sparse24_cslt_compress", _no_backward,
        setup_context=_refuse("sparse24_cslt_compress", "values", _CSLT_REMEDY))
    reg("sp24::sparsify24_cslt", _no_backward, setup_context=_refuse("sparsify24_cslt", "x", _CSLT_REMEDY))
    reg("sp24::sparse24_cslt_mm", _no_backward, setup_context=_refuse("sparse24_cslt_mm", "b or bias", _CSLT_REMEDY))
    for op, what in (("sparsify24_fp8", "x"), ("sparsify24_transposed_fp8", "x"), ("quantize_rows_fp8", "x"),
                     ("sparse24_fp8_mm", "its inputs")):
        reg(f"sp24::{op}", _no_backward, setup_context=_refuse(op, what, _FP8_REMEDY))


_register()


# ---- straight-through gradient ("ste") -------------------------------------------------------------
def _ste_pullback(dense_grad: Tensor, src: Tensor, activation: Optional[str], columns: Optional[Tensor],
                 transposed: bool) -> Tensor:
    """The gradient w.r.t. the sparsified input `src` of a gradient w.r.t. the dense matrix A it
    represents, straight through the 2:4 selection (every position, kept or dropped)."""
    g = dense_grad.float()  # one rounding, at the end
    if not transposed:
        return (relu2_grad(g, src) if activation == "relu2" else g).to(src.dtype)
    if columns is None:
        return g.t().to(src.dtype)
    return g.new_zeros(src.shape).index_add_(1, columns, g.t()).to(src.dtype)


class _SteToDense(torch.autograd.Function):
    """to_dense(values, indices) whose gradient goes straight through to `src` (values detached)."""

    @staticmethod
    def forward(src, values, indices, activation, columns, transposed):
        return _ops.sparse24_to_dense(values, indices)

    @staticmethod
    def setup_context(ctx, inputs, output):
        src, _values, _indices, activation, columns, transposed = inputs
        ctx.activation, ctx.transposed = activation, transposed
        ctx.save_for_backward(src, columns)

    @staticmethod
    def backward(ctx, dout):
        src, columns = ctx.saved_tensors
        return _ste_pullback(dout, src, ctx.activation, columns, ctx.transposed), None, None, None, None, None


class _SteMM(torch.autograd.Function):
    """sparse24_mm(values, indices, b, bias) whose gradient w.r.t. the sparse operand goes straight
    through to `src` as the dense dA = dout @ b.T (values detached)."""

    @staticmethod
    def forward(src, values, indices, b, bias, out_dtype, activation, columns, transposed):
        return _ops.sparse24_mm(values, indices, b, bias, out_dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        src, values, indices, b, bias, _out_dtype, activation, columns, transposed = inputs
        ctx.activation, ctx.transposed = activation, transposed
        ctx.save_for_backward(src, values, indices, b, bias, columns)

    @staticmethod
    def backward(ctx, dout):
        src, values, indices, b, bias, columns = ctx.saved_tensors
        need_src, _, _, need_b, need_bias = ctx.needs_input_grad[:5]
        dsrc = None
        if need_src:
            dsrc = _ste_pullback(dout.float() @ b.float().t(), src, ctx.activation, columns, ctx.transposed)
        _, db, dbias = _mm_grads(dout, values, indices, b, bias, (False, need_b, need_bias))
        return dsrc, None, None, db, dbias, None, None, None, None
