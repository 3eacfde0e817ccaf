"""Fully connected layer y = x Wᵀ + b, with its backward pass written out.

Any leading dimensions are flattened into one batch axis of rows, so the whole op is one GEMM::

    y     = x @ Wᵀ + b        (rows, out)
    dL/dx = G @ W             (rows, in)
    dL/dW = Gᵀ @ x            (out, in)    summed over every row, i.e. over the batch
    dL/db = Σ_rows G
"""

from __future__ import annotations

import math

import torch

from cnnlab.functional._utils import (
    cast_like_builtin_lowp,
    check_same_device,
    check_same_dtype,
    first_order_only,
    fresh_outputs,
)


class LinearFunction(torch.autograd.Function):
    """y = x Wᵀ + b for x of shape (*, in_features).

    ``once_differentiable``: the backward is plain code, a second derivative through it would
    silently miss terms, so asking for one is an error.
    """

    @staticmethod
    @fresh_outputs
    def forward(
        ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        rows = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])
        # The GEMM writes into the output tensor itself: a Function that returned a reshaped
        # view of its result could not be followed by an in-place op (``ReLU(inplace=True)``).
        out = x.new_empty((*x.shape[:-1], weight.shape[0]))
        out_rows = out.view(rows.shape[0], weight.shape[0])
        if bias is None:
            torch.mm(rows, weight.t(), out=out_rows)
        else:
            torch.addmm(bias, rows, weight.t(), out=out_rows)
        ctx.save_for_backward(rows, weight)
        ctx.input_shape = x.shape
        return out

    @staticmethod
    @first_order_only
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        rows, weight = ctx.saved_tensors
        grad_rows = grad_out.reshape(rows.shape[0], weight.shape[0])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(grad_rows, weight).view(ctx.input_shape)
        if ctx.needs_input_grad[1]:
            grad_w = torch.mm(grad_rows.t(), rows)
        if ctx.needs_input_grad[2]:
            grad_b = grad_rows.sum(dim=0)
        return grad_x, grad_w, grad_b


def linear(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.linear``; a layer prefixes errors with its repr."""
    name = "linear"
    if weight.dim() != 2:
        raise ValueError(f"{name} expected a 2-D weight (out, in), got shape {tuple(weight.shape)}")
    out_features, in_features = weight.shape
    if input.dim() == 0 or input.shape[-1] != in_features:
        raise ValueError(
            f"{name} expected input whose last dimension has {in_features} features, got shape "
            f"{tuple(input.shape)}; flatten the input first (e.g. nn.Flatten) or fix in_features"
        )
    if bias is not None and tuple(bias.shape) != (out_features,):
        raise ValueError(
            f"{name} expected bias of shape ({out_features},), got {tuple(bias.shape)}"
        )

    check_same_device(name, input, weight=weight, bias=bias)
    input, weight, bias = cast_like_builtin_lowp(input, weight, bias)
    check_same_dtype(name, input, weight=weight, bias=bias)
    return LinearFunction.apply(input, weight, bias)
