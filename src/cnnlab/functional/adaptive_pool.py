"""Adaptive average pooling as two small averaging matrices, with hand-written backward.

Output row ``i`` of ``OH`` averages input rows ``floor(i*H/OH)`` to ``ceil((i+1)*H/OH) - 1``
(ATen's windows, which may overlap), and likewise for columns. The pooling is separable:
``y = (R @ x @ Cᵀ) / (rows_i * cols_j)`` with 0/1 window matrices ``R`` (OH x H) and ``C``
(OW x W), so the windows are summed exactly and divided once, as ATen does, and backward is
the transpose, ``dx = Rᵀ @ (g / counts) @ C``. The ubiquitous global pool (output 1x1) is a
mean over H and W. Sums run in float32 for bf16/fp16 input and the output keeps its dtype.
"""

from __future__ import annotations

import torch

from cnnlab.functional._pool_windows import (
    check_input,
    layout_of,
    spread_over_input,
    to_batched,
)
from cnnlab.functional._utils import first_order_only, fresh_outputs, opmath_dtype


def _windows(size: int, out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The (out, size) 0/1 matrix of ATen's adaptive windows along one axis."""
    i = torch.arange(out, device=device)
    start = (i * size) // out
    end = ((i + 1) * size + out - 1) // out
    j = torch.arange(size, device=device)
    return ((j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])).to(dtype)


class _AdaptiveAvgPool2d(torch.autograd.Function):
    """Adaptive average pooling over 4-D input; backward needs only the shapes."""

    @staticmethod
    @fresh_outputs
    def forward(ctx, input: torch.Tensor, output_size: tuple[int, int]):
        ctx.input_shape, ctx.output_size = input.shape, output_size
        ctx.input_format = layout_of(input)
        x = input.to(opmath_dtype(input.dtype))
        if output_size == (1, 1):
            return x.mean((2, 3), keepdim=True).to(input.dtype)
        rows, cols = _matrices(input.shape, output_size, x.dtype, x.device)
        with _no_autocast(x):  # the sums stay in float32, whatever autocast would pick
            total = rows @ x @ cols.T
        counts = rows.sum(1)[:, None] * cols.sum(1)[None, :]
        return (total / counts).to(input.dtype).contiguous(memory_format=ctx.input_format)

    @staticmethod
    @first_order_only
    def backward(ctx, grad: torch.Tensor):
        _, _, h, w = ctx.input_shape
        g = grad.to(opmath_dtype(grad.dtype))
        if ctx.output_size == (1, 1):
            share = g / (h * w)
            return spread_over_input(share, ctx.input_shape, grad.dtype, ctx.input_format), None
        rows, cols = _matrices(ctx.input_shape, ctx.output_size, g.dtype, g.device)
        counts = rows.sum(1)[:, None] * cols.sum(1)[None, :]
        with _no_autocast(g):
            grad_input = rows.T @ (g / counts) @ cols
        return grad_input.to(grad.dtype).contiguous(memory_format=ctx.input_format), None


def _matrices(
    input_shape: torch.Size, output_size: tuple[int, int], dtype: torch.dtype, device
) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        _windows(input_shape[2], output_size[0], dtype, device),
        _windows(input_shape[3], output_size[1], dtype, device),
    )


def _no_autocast(t: torch.Tensor) -> torch.autocast:
    return torch.autocast(t.device.type, enabled=False)


def _output_size(
    input: torch.Tensor, output_size: int | tuple[int | None, ...] | None
) -> tuple[int, int]:
    """``torch.nn``'s spelling: an int, or a pair whose ``None`` keeps the input's size."""
    sizes = (
        (output_size, output_size) if not isinstance(output_size, (tuple, list)) else output_size
    )
    if len(sizes) == 1:
        sizes = (sizes[0], sizes[0])
    if len(sizes) != 2:
        raise ValueError(
            f"adaptive_avg_pool2d: output_size must be an int or a pair, got {output_size!r}"
        )
    out = tuple(int(input.shape[-2 + i]) if s is None else int(s) for i, s in enumerate(sizes))
    if min(out) < 1:
        raise ValueError(f"adaptive_avg_pool2d: output_size must be positive, got {output_size!r}")
    return out  # type: ignore[return-value]


def adaptive_avg_pool2d(
    input: torch.Tensor, output_size: int | tuple[int | None, ...] | None
) -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.adaptive_avg_pool2d``."""
    check_input("adaptive_avg_pool2d", input)
    size = _output_size(input, output_size)
    batched, unbatched = to_batched(input)
    output = _AdaptiveAvgPool2d.apply(batched, size)
    return output.squeeze(0) if unbatched else output
