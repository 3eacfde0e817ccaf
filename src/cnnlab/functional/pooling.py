"""Max and average pooling built from strided views of the input, with hand-written backward.

Each window position ``(kh, kw)`` is one strided slice of the (padded) input, so a forward pass
is ``kh * kw`` elementwise ops over output-sized tensors: no unfold, no windows copy, and every
memory layout (channels_last from a conv, transposed views) works unchanged. Max pooling scans
the window positions in PyTorch's order with PyTorch's update rule, so ties and NaNs pick the
same element as the built-in kernel; it saves only that window position (one byte per output)
and its backward routes each gradient there: for disjoint windows (the usual 2x2 / stride 2) by
one masked write per window position, otherwise by a scatter-add into the input plane. Average
pooling saves nothing but shapes.
"""

from __future__ import annotations

import torch

from cnnlab.functional import _kernels as kernels
from cnnlab.functional._max_pool_math import plane_indices
from cnnlab.functional._pool_windows import (
    IntPair,
    PoolGeometry,
    check_input,
    layout_of,
    pad_input,
    pool_geometry,
    spread_over_input,
    to_batched,
)
from cnnlab.functional._utils import first_order_only, fresh_outputs, opmath_dtype


class _MaxPool2d(torch.autograd.Function):
    """Max pooling over 4-D input; saves only each window's argmax position (one byte each).

    The arithmetic lives in :mod:`cnnlab.functional._max_pool_math`;
    :mod:`cnnlab.functional._kernels` hands it to ``torch.compile`` as custom operators.
    """

    @staticmethod
    @fresh_outputs
    def forward(ctx, input, dims: tuple[PoolGeometry, PoolGeometry], return_indices: bool):
        output, arg = kernels.max_pool_forward(input, dims)
        ctx.dims, ctx.input_shape = dims, input.shape
        ctx.input_format = layout_of(input)
        ctx.save_for_backward(arg)
        if not return_indices:
            return output
        indices = plane_indices(arg, dims)
        ctx.mark_non_differentiable(indices)
        return output, indices

    @staticmethod
    @first_order_only
    def backward(ctx, grad: torch.Tensor, *_grad_indices: torch.Tensor):
        (arg,) = ctx.saved_tensors
        grad_input = kernels.max_pool_backward(
            grad, arg, ctx.dims, ctx.input_shape, ctx.input_format
        )
        return grad_input, None, None


class _AvgPool2d(torch.autograd.Function):
    """Average pooling over 4-D input; backward needs only shapes and the per-window divisor."""

    @staticmethod
    @fresh_outputs
    def forward(ctx, input, dims, count_include_pad: bool, divisor_override: int | None):
        gh, gw = dims
        ctx.dims, ctx.input_shape = dims, input.shape
        ctx.input_format = layout_of(input)
        if _one_window(dims):
            # A global pool (ResNet's last 8x8): one reduction instead of 64 slice-adds, which
            # took 0.7 ms against 0.09 eager and were 64 ops more for torch.compile to trace and
            # generate code for, times three in backward. Sums in another order: within 1 ulp.
            total = input.sum((2, 3), keepdim=True, dtype=opmath_dtype(input.dtype))
            ctx.divisor = divisor_override or gh.kernel * gw.kernel
            return (total / ctx.divisor).to(input.dtype)
        source = pad_input(input, dims, 0.0)
        total = source[..., gh.taps(0), gw.taps(0)].to(opmath_dtype(input.dtype), copy=True)
        for k in range(1, gh.kernel * gw.kernel):
            total.add_(source[..., gh.taps(k // gw.kernel), gw.taps(k % gw.kernel)])
        ctx.divisor = _avg_divisor(dims, count_include_pad, divisor_override, total)
        return (total / ctx.divisor).to(input.dtype)

    @staticmethod
    @first_order_only
    def backward(ctx, grad: torch.Tensor):
        gh, gw = ctx.dims
        share = grad / ctx.divisor
        n, c = ctx.input_shape[:2]
        if _one_window(ctx.dims):
            grad_input = spread_over_input(share, ctx.input_shape, grad.dtype, ctx.input_format)
            return grad_input, None, None, None
        grad_padded = torch.empty(
            (n, c, gh.padded, gw.padded),
            dtype=grad.dtype,
            device=grad.device,
            memory_format=ctx.input_format,
        ).zero_()
        for k in range(gh.kernel * gw.kernel):
            grad_padded[..., gh.taps(k // gw.kernel), gw.taps(k % gw.kernel)].add_(share)
        return (
            grad_padded[..., gh.padding : gh.padding + gh.size, gw.padding : gw.padding + gw.size],
            None,
            None,
            None,
        )


def _one_window(dims: tuple[PoolGeometry, PoolGeometry]) -> bool:
    """Whether the only window is the whole, unpadded input (a global average pool)."""
    return all(g.out == 1 and g.padding == 0 and g.kernel == g.size for g in dims)


def _avg_divisor(
    dims: tuple[PoolGeometry, PoolGeometry],
    count_include_pad: bool,
    divisor_override: int | None,
    like: torch.Tensor,
) -> torch.Tensor | int:
    """Per-window divisor exactly as ATen computes it (padding counts, ceil overhang does not)."""
    if divisor_override is not None:
        return divisor_override
    counts = []
    for g in dims:
        start = g.starts(like.device)
        end = (start + g.kernel).clamp_max(g.size + g.padding)
        if not count_include_pad:
            start, end = start.clamp_min(0), end.clamp_max(g.size)
        counts.append(end - start)
    return (counts[0][:, None] * counts[1][None, :]).to(like.dtype)


def max_pool2d(
    input: torch.Tensor,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Drop-in for ``torch.nn.functional.max_pool2d`` (same arguments, ties, NaNs, indices)."""
    check_input("max_pool2d", input)
    dims = pool_geometry("max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode)
    batched, unbatched = to_batched(input)
    result = _MaxPool2d.apply(batched, dims, return_indices)
    if not unbatched:
        return result
    return tuple(t.squeeze(0) for t in result) if return_indices else result.squeeze(0)


def avg_pool2d(
    input: torch.Tensor,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.avg_pool2d`` (same divisors, incl. ceil-mode edges)."""
    check_input("avg_pool2d", input)
    if divisor_override is not None and divisor_override == 0:
        raise ValueError("avg_pool2d: divisor_override must be non-zero (or None), got 0")
    dims = pool_geometry("avg_pool2d", input, kernel_size, stride, padding, 1, ceil_mode)
    batched, unbatched = to_batched(input)
    output = _AvgPool2d.apply(batched, dims, count_include_pad, divisor_override)
    return output.squeeze(0) if unbatched else output
