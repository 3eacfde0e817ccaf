"""ReLU and log-softmax as autograd Functions with hand-written backward passes."""

from __future__ import annotations

import warnings

import torch

from cnnlab.functional._utils import first_order_only, fresh_outputs, inplace_in_eager, opmath_dtype


class _ReLU(torch.autograd.Function):
    """``max(x, 0)``; backward derives the mask from the output, so nothing extra is stored."""

    @staticmethod
    @fresh_outputs
    def forward(ctx, input: torch.Tensor, inplace: bool):
        if inplace:
            ctx.mark_dirty(input)
            output = input.clamp_min_(0)
        else:
            output = input.clamp_min(0)
        ctx.save_for_backward(output)
        return output

    @staticmethod
    @first_order_only
    def backward(ctx, grad: torch.Tensor):
        (output,) = ctx.saved_tensors
        if torch.compiler.is_compiling():  # dynamo refuses out= into a non-contiguous mask
            # sign(relu(x)) is the 0/1 mask as a float: a bool mask would make the partitioner
            # save it from the forward kernel, and inductor's CPU bool stores run 5x slower
            # than the whole ReLU.
            return grad * output.sign(), None
        # g * [x > 0], with [x > 0] = [relu(x) > 0] written as 0/1 straight into the result's
        # buffer and multiplied in place: one allocation and two vectorised passes, where CPU
        # masked_fill/where cost several times more. Only a NaN activation, already fatal to
        # training, differs: [NaN > 0] = 0 stops its gradient; ATen passes it.
        mask = torch.empty_like(grad, memory_format=torch.preserve_format)
        return torch.gt(output, 0, out=mask).mul_(grad), None


def relu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.relu``."""
    return _ReLU.apply(input, inplace_in_eager(inplace))


def log_softmax_values(input: torch.Tensor, dim: int) -> torch.Tensor:
    """Numerically stable ``x - logsumexp(x)`` along ``dim``, accumulated like the built-in.

    Shared by :class:`_LogSoftmax` and the cross-entropy Function, which needs the same values
    but writes its own fused backward.
    """
    if input.numel() == 0:  # amax has no identity to reduce an empty dim with
        return input.clone()
    x = input.to(opmath_dtype(input.dtype))
    shifted = x - x.amax(dim, keepdim=True)
    return (shifted - shifted.exp().sum(dim, keepdim=True).log()).to(input.dtype)


class _LogSoftmax(torch.autograd.Function):
    """``log_softmax``; backward ``g - softmax * sum(g)`` needs only the output."""

    @staticmethod
    @fresh_outputs
    def forward(ctx, input: torch.Tensor, dim: int):
        output = log_softmax_values(input, dim)
        ctx.dim = dim
        ctx.save_for_backward(output)
        return output

    @staticmethod
    @first_order_only
    def backward(ctx, grad: torch.Tensor):
        (output,) = ctx.saved_tensors
        return grad - output.exp() * grad.sum(ctx.dim, keepdim=True), None


def _legacy_softmax_dim(ndim: int) -> int:
    """The dimension ``torch.nn.functional`` picks when ``dim`` is omitted (deprecated there)."""
    warnings.warn(
        "Implicit dimension choice for log_softmax has been deprecated. "
        "Change the call to include dim=X as an argument.",
        stacklevel=3,
    )
    return 0 if ndim in (0, 1, 3) else 1


def log_softmax(
    input: torch.Tensor,
    dim: int | None = None,
    _stacklevel: int = 3,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.log_softmax``."""
    if dim is None:
        dim = _legacy_softmax_dim(input.dim())
    if dtype is not None:
        input = input.to(dtype)
    if not input.is_floating_point():
        raise TypeError(f"log_softmax expected a floating-point input, got {input.dtype}")
    return _LogSoftmax.apply(input, dim)
