"""Layer normalisation over the trailing dimensions, with the closed-form backward written out.

Statistics are per sample over ``normalized_shape`` (biased variance, as ``torch.nn``), in
float32 for bf16/fp16 input; the output keeps the input's dtype. Like the built-in on a GPU,
autocast runs it in float32 there (``layer_norm`` is on CUDA autocast's float32 list; on the
CPU it is not, and the output stays in the input's dtype).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cnnlab.functional._utils import (
    cast_like_builtin_fp32,
    check_same_device,
    first_order_only,
    fresh_outputs,
    opmath_dtype,
)


class _LayerNorm(torch.autograd.Function):
    """Saves the input and the per-sample mean and 1/std (as the built-in), not ``x_hat``."""

    @staticmethod
    @fresh_outputs
    def forward(ctx, input, weight, bias, dims: tuple[int, ...], eps: float):
        x = input.to(opmath_dtype(input.dtype))
        mean = x.mean(dims, keepdim=True)
        centred = x - mean
        rstd = centred.square().mean(dims, keepdim=True).add_(eps).rsqrt_()
        output = centred.mul_(rstd)
        if weight is not None:
            output = output.mul_(weight)
        if bias is not None:
            output = output.add_(bias)
        ctx.dims = dims
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.save_for_backward(input, weight, mean, rstd)
        return output.to(input.dtype)

    @staticmethod
    @first_order_only
    def backward(ctx, grad: torch.Tensor):
        input, weight, mean, rstd = ctx.saved_tensors
        dims = ctx.dims
        x, g = input.to(mean.dtype), grad.to(mean.dtype)
        x_hat = (x - mean).mul_(rstd)
        batch_dims = tuple(range(x.dim() - len(dims)))
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            g_hat = g if weight is None else g * weight
            # dx = rstd * (g_hat - mean(g_hat) - x_hat * mean(g_hat * x_hat))
            projection = (g_hat * x_hat).mean(dims, keepdim=True)
            grad_input = (g_hat - g_hat.mean(dims, keepdim=True) - x_hat * projection) * rstd
            grad_input = grad_input.to(input.dtype)
        # (sum over no dims would reduce them all: an unbatched input's gradient is itself)
        over_batch = (lambda t: t.sum(batch_dims)) if batch_dims else (lambda t: t)
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = over_batch(g * x_hat).to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_bias = over_batch(g).to(ctx.bias_dtype)
        return grad_input, grad_weight, grad_bias, None, None


def layer_norm(
    input: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.layer_norm``."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if not shape or tuple(input.shape[input.dim() - len(shape) :]) != shape:
        raise ValueError(
            f"layer_norm: the input's trailing dimensions must be normalized_shape={list(shape)}, "
            f"got input of shape {tuple(input.shape)}"
        )
    if not input.is_floating_point():
        raise TypeError(f"layer_norm expected a floating-point input, got {input.dtype}")
    check_same_device("layer_norm", input, weight=weight, bias=bias)
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None and tuple(param.shape) != shape:
            raise ValueError(f"layer_norm: {name} has shape {tuple(param.shape)}, expected {shape}")
    if input.device.type == "cuda":
        (input,) = cast_like_builtin_fp32(input)
    dims = tuple(range(-len(shape), 0))
    return _LayerNorm.apply(input, weight, bias, dims, eps)
