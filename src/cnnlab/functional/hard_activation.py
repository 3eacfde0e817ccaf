"""Piecewise-linear activations of mobile networks (Hardtanh/ReLU6, Hardsigmoid, Hardswish).

Each is a clamp and a product forward; backward is the slope of the piece each input fell on,
with PyTorch's choice at the kinks (the slope of the flat piece at Hardtanh's and
Hardsigmoid's limits, of the outer pieces at Hardswish's). What is saved never aliases the output, so an in-place op after
the layer (``out += identity``) works as after the built-in, and ``inplace=True`` overwrites
the input as the built-in does.
"""

from __future__ import annotations

import torch

from cnnlab.functional._utils import first_order_only, fresh_outputs, inplace_in_eager


class _Hardtanh(torch.autograd.Function):
    """``clamp(x, min_val, max_val)``; saves a one-byte mask of the inputs strictly inside."""

    @staticmethod
    @fresh_outputs
    def forward(ctx, input: torch.Tensor, min_val: float, max_val: float, inplace: bool):
        # ATen zeroes the gradient where x <= min or x >= max, so a NaN input passes it through.
        inside = torch.le(input, min_val).logical_or_(input >= max_val).logical_not_()
        ctx.save_for_backward(inside)
        if inplace:
            ctx.mark_dirty(input)
            return input.clamp_(min_val, max_val)
        return input.clamp(min_val, max_val)

    @staticmethod
    @first_order_only
    def backward(ctx, grad: torch.Tensor):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


def hardtanh(
    input: torch.Tensor, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False
) -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.hardtanh``."""
    if min_val > max_val:
        raise ValueError("min_val cannot be greater than max_val")
    return _Hardtanh.apply(input, min_val, max_val, inplace_in_eager(inplace))


def relu6(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.relu6``: ``hardtanh(x, 0, 6)``, as in ATen."""
    return hardtanh(input, 0.0, 6.0, inplace)


#: ATen's backward multiplies by ``1.0f / 6.0f``, a float32 constant even for float64 input;
#: the same constant keeps float64 gradients equal to the built-in's bit for bit.
_ONE_SIXTH = float(torch.tensor(1 / 6, dtype=torch.float32))


class _Hardsigmoid(torch.autograd.Function):
    """``clamp(x + 3, 0, 6) / 6``; slope 1/6 strictly inside (-3, 3), else 0 (a one-byte mask)."""

    @staticmethod
    @fresh_outputs
    def forward(ctx, input: torch.Tensor, inplace: bool):
        ctx.save_for_backward(torch.gt(input, -3).logical_and_(input < 3))
        if inplace:
            ctx.mark_dirty(input)
            input.add_(3).clamp_(0, 6).div_(6)
            return input  # the very tensor marked dirty (dynamo checks that, not a chain's result)
        return (input + 3).clamp_(0, 6).div_(6)

    @staticmethod
    @first_order_only
    def backward(ctx, grad: torch.Tensor):
        (inside,) = ctx.saved_tensors
        return grad.mul(_ONE_SIXTH).mul_(inside), None


def hardsigmoid(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.hardsigmoid``."""
    return _Hardsigmoid.apply(input, inplace_in_eager(inplace))


class _Hardswish(torch.autograd.Function):
    """``x * clamp(x + 3, 0, 6) / 6``; slope 0 up to -3, ``x/3 + 1/2`` below 3, then 1.

    The slope needs ``x`` itself, so the input is saved (a copy when it is overwritten in place,
    as the built-in keeps one).
    """

    @staticmethod
    @fresh_outputs
    def forward(ctx, input: torch.Tensor, inplace: bool):
        gate = (input + 3).clamp_(0, 6)
        if inplace:
            ctx.save_for_backward(input.clone())
            ctx.mark_dirty(input)
            input.mul_(gate).div_(6)
            return input
        ctx.save_for_backward(input)
        return gate.mul_(input).div_(6)

    @staticmethod
    @first_order_only
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        # ATen's branches: x <= -3 -> 0, x < 3 -> x/3 + 1/2, else (and NaN) -> 1.
        slope = torch.where(x < 3, x / 3 + 0.5, 1.0)
        return grad * slope.masked_fill_(x <= -3, 0.0), None


def hardswish(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.hardswish``."""
    return _Hardswish.apply(input, inplace_in_eager(inplace))
