"""Smooth activations: Sigmoid, SiLU (swish) and GELU (exact erf and tanh approximation).

The logistic function is written as ``1 / (1 + exp(-x))`` (no call to PyTorch's sigmoid
kernel), which rounds to the correctly rounded value in both tails: ``exp(-x)`` overflows to
``inf`` for very negative ``x`` and the quotient is 0, as it should be. bf16/fp16 inputs are
computed in float32 and rounded once, as ATen's vectorised kernels do. Backward uses the
closed-form derivatives ATen uses, so float64 results agree to rounding.
"""

from __future__ import annotations

import math

import torch

from cnnlab.functional._utils import first_order_only, fresh_outputs, inplace_in_eager, opmath_dtype


def _logistic(x: torch.Tensor) -> torch.Tensor:
    """``1 / (1 + exp(-x))`` in three passes over one fresh buffer."""
    return torch.neg(x).exp_().add_(1).reciprocal_()


def _widened(t: torch.Tensor) -> torch.Tensor:
    return t.to(opmath_dtype(t.dtype))


class _Sigmoid(torch.autograd.Function):
    """``1 / (1 + exp(-x))``; backward ``g * y * (1 - y)`` needs only the output."""

    @staticmethod
    @fresh_outputs
    def forward(ctx, input: torch.Tensor):
        output = _logistic(_widened(input)).to(input.dtype)
        ctx.save_for_backward(output)
        return output

    @staticmethod
    @first_order_only
    def backward(ctx, grad: torch.Tensor):
        (output,) = ctx.saved_tensors
        y = _widened(output)
        return (_widened(grad) * (1 - y) * y).to(grad.dtype)


def sigmoid(input: torch.Tensor) -> torch.Tensor:
    """Drop-in for ``torch.sigmoid`` / ``torch.nn.functional.sigmoid``."""
    return _Sigmoid.apply(input)


class _SiLU(torch.autograd.Function):
    """``x * sigmoid(x)``; backward ``g * s * (1 + x * (1 - s))`` recomputes ``s`` from ``x``.

    Saving the input rather than ``s`` costs no activation memory where the input is alive
    anyway; in place, a copy of the input is kept (as the built-in does).
    """

    @staticmethod
    @fresh_outputs
    def forward(ctx, input: torch.Tensor, inplace: bool):
        x = _widened(input)
        denominator = torch.neg(x).exp_().add_(1)  # 1 + exp(-x): ATen's x / (1 + exp(-x))
        if inplace:
            ctx.save_for_backward(input.clone())
            ctx.mark_dirty(input)
            return input.div_(denominator)
        ctx.save_for_backward(input)
        return torch.div(x, denominator).to(input.dtype)

    @staticmethod
    @first_order_only
    def backward(ctx, grad: torch.Tensor):
        (input,) = ctx.saved_tensors
        x = _widened(input)
        s = _logistic(x)
        return (_widened(grad) * s * (1 + x * (1 - s))).to(grad.dtype), None


def silu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.silu``."""
    return _SiLU.apply(input, inplace_in_eager(inplace))


GELU_APPROXIMATIONS = ("none", "tanh")
_SQRT_HALF = math.sqrt(0.5)
_PDF_SCALE = 1 / math.sqrt(2 * math.pi)  # the standard normal density is this * exp(-x^2 / 2)
_TANH_BETA = math.sqrt(2 / math.pi)
_TANH_KAPPA = 0.044715


class _GELU(torch.autograd.Function):
    """``x * Phi(x)`` (or its tanh approximation); saves the input, as the built-in does."""

    @staticmethod
    @fresh_outputs
    def forward(ctx, input: torch.Tensor, approximate: str):
        x = _widened(input)
        if approximate == "tanh":
            inner = x * x * x * _TANH_KAPPA + x
            output = 0.5 * x * (1 + torch.tanh(inner * _TANH_BETA))
        else:
            output = x * 0.5 * (1 + torch.erf(x * _SQRT_HALF))
        ctx.approximate = approximate
        ctx.save_for_backward(input)
        return output.to(input.dtype)

    @staticmethod
    @first_order_only
    def backward(ctx, grad: torch.Tensor):
        (input,) = ctx.saved_tensors
        x = _widened(input)
        if ctx.approximate == "tanh":
            # d/dx [x/2 (1 + tanh(u))] = (1 + tanh u)/2 + x/2 (1 - tanh^2 u) u',
            # u = beta (x + kappa x^3), u' = beta (1 + 3 kappa x^2)
            t = torch.tanh((x * x * x * _TANH_KAPPA + x) * _TANH_BETA)
            du = (x * x * (3 * _TANH_KAPPA) + 1) * _TANH_BETA
            slope = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du
        else:  # Phi(x) + x * phi(x)
            cdf = 0.5 * (1 + torch.erf(x * _SQRT_HALF))
            slope = cdf + x * torch.exp(-0.5 * x * x) * _PDF_SCALE
        return (_widened(grad) * slope).to(grad.dtype), None


def gelu(input: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.gelu``."""
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(
            f"gelu: approximate must be one of {GELU_APPROXIMATIONS}, got {approximate!r}"
        )
    return _GELU.apply(input, approximate)
