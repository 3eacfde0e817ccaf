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

import math

import torch

from cnnlab.functional._pool_windows import (
    IntPair,
    PoolGeometry,
    any_empty_window,
    check_input,
    disjoint_windows,
    empty_windows,
    first_valid_tap,
    inside_input,
    layout_of,
    pad_input,
    pool_geometry,
    to_batched,
    window_offsets,
)
from cnnlab.functional._utils import first_order_only, host_checks_allowed, opmath_dtype


class _MaxPool2d(torch.autograd.Function):
    """Max pooling over 4-D input; saves only each window's argmax position (one byte each)."""

    @staticmethod
    def forward(ctx, input, dims: tuple[PoolGeometry, PoolGeometry], return_indices: bool):
        inside = inside_input(dims)
        output, arg = _scan_max(pad_input(input, dims, -math.inf), dims, inside)
        ctx.dims, ctx.input_shape = dims, input.shape
        ctx.input_format = layout_of(input)
        ctx.save_for_backward(arg)
        if not return_indices:
            return output
        indices = _plane_indices(arg, dims)
        ctx.mark_non_differentiable(indices)
        return output, indices

    @staticmethod
    @first_order_only
    def backward(ctx, grad: torch.Tensor, *_grad_indices: torch.Tensor):
        (arg,) = ctx.saved_tensors
        if disjoint_windows(ctx.dims):
            return (
                _route_to_taps(grad, arg, ctx.dims, ctx.input_shape, ctx.input_format),
                None,
                None,
            )
        indices = _plane_indices(arg, ctx.dims)
        if any_empty_window(ctx.dims):  # geometry only: decided on the host, no sync
            empty = empty_windows(ctx.dims, grad.device)
            grad, indices = grad.masked_fill(empty, 0), indices.masked_fill(empty, 0)
        return _scatter_to_plane(grad, indices, ctx.input_shape, ctx.input_format), None, None


def _route_to_taps(
    grad: torch.Tensor,
    arg: torch.Tensor,
    dims: tuple[PoolGeometry, PoolGeometry],
    input_shape: torch.Size,
    input_format: torch.memory_format,
) -> torch.Tensor:
    """Gradient routing for disjoint windows: slice ``k`` gets ``grad * [argmax == k]``.

    ``kh * kw`` elementwise writes into strided views replace ATen's scatter; pixels no window
    covers (a remainder row or column, or stride > kernel) are the only ones zero-filled.
    ``torch.compile`` cannot trace ``out=`` into strided views, so there the same routing is
    one broadcast expression, which inductor fuses into a single kernel.
    """
    if torch.compiler.is_compiling():
        return _route_to_taps_broadcast(grad, arg, dims, input_shape)
    gh, gw = dims
    covered = gh.out * gh.stride == gh.size and gw.out * gw.stride == gw.size
    covered = covered and gh.stride == gh.kernel and gw.stride == gw.kernel
    grad_input = torch.empty(
        input_shape, dtype=grad.dtype, device=grad.device, memory_format=input_format
    )
    if not covered:
        grad_input.zero_()
    hit = torch.empty_like(arg, dtype=torch.bool)
    for k in range(gh.kernel * gw.kernel):
        torch.eq(arg, k, out=hit)
        torch.mul(grad, hit, out=grad_input[..., gh.taps(k // gw.kernel), gw.taps(k % gw.kernel)])
    return grad_input


def _route_to_taps_broadcast(
    grad: torch.Tensor,
    arg: torch.Tensor,
    dims: tuple[PoolGeometry, PoolGeometry],
    input_shape: torch.Size,
) -> torch.Tensor:
    """:func:`_route_to_taps` without ``out=``: each output cell as its (stride x stride) tile.

    Window position ``(i, j)`` of output ``(oh, ow)`` is pixel ``(oh * sh + i, ow * sw + j)``;
    tile entries beyond the kernel (stride > kernel) and rows or columns no window reaches get
    zero.
    """
    gh, gw = dims
    n, c, oh, ow = grad.shape
    i = torch.arange(gh.stride, device=grad.device).view(1, 1, 1, -1, 1, 1)
    j = torch.arange(gw.stride, device=grad.device).view(1, 1, 1, 1, 1, -1)
    tap = torch.where((i < gh.kernel) & (j < gw.kernel), i * gw.kernel + j, -1)
    hit = arg[:, :, :, None, :, None] == tap
    tiles = (grad[:, :, :, None, :, None] * hit).reshape(n, c, oh * gh.stride, ow * gw.stride)
    height, width = input_shape[2], input_shape[3]
    tiles = tiles[..., :height, :width]
    pad_h, pad_w = height - tiles.shape[2], width - tiles.shape[3]
    if pad_h or pad_w:
        tiles = torch.cat([tiles, tiles.new_zeros((n, c, pad_h, tiles.shape[3]))], dim=2)
        tiles = torch.cat([tiles, tiles.new_zeros((n, c, height, pad_w))], dim=3)
    return tiles


def _scatter_to_plane(
    grad: torch.Tensor,
    indices: torch.Tensor,
    input_shape: torch.Size,
    input_format: torch.memory_format,
) -> torch.Tensor:
    """Add each output gradient to its argmax in the flattened ``H * W`` plane (ATen's routing).

    For channels_last input the plane is scattered as (N, H * W, C), so the gradient comes out
    in the same layout as the input with contiguous writes along C.
    """
    n, c, h, w = input_shape
    outputs = indices.shape[2] * indices.shape[3]
    if input_format == torch.channels_last:
        grad_input = grad.new_zeros((n, h * w, c))
        grad_input.scatter_add_(
            1,
            indices.permute(0, 2, 3, 1).reshape(n, outputs, c),
            grad.permute(0, 2, 3, 1).reshape(n, outputs, c),
        )
        return grad_input.view(n, h, w, c).permute(0, 3, 1, 2)
    grad_input = grad.new_zeros((n, c, h * w))
    grad_input.scatter_add_(2, indices.reshape(n, c, outputs), grad.reshape(n, c, outputs))
    return grad_input.view(n, c, h, w)


def _scan_max(
    source: torch.Tensor, dims: tuple[PoolGeometry, PoolGeometry], inside: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Max and argmax (window position) of every window, choosing the element ATen chooses.

    ATen starts each window at its first in-bounds tap and then takes a value if it is strictly
    larger or NaN, so ties keep the first maximum and the last NaN wins; padding (-inf) is never
    taken. In CPU eager mode the common NaN-free case skips the NaN test (fewer passes over
    memory); NaN still propagates through ``maximum``, and only then is the exact rule replayed.
    Elsewhere that test would be a host sync (GPU) or a graph break (``torch.compile``), so the
    exact rule always runs: compiled, it fuses into the same kernel anyway.
    """
    if not host_checks_allowed(source):
        return _scan_taps(source, dims, inside, nan_aware=True)
    output, arg = _scan_taps(source, dims, inside)
    if output.isnan().any():
        output, arg = _scan_taps(source, dims, inside, nan_aware=True)
    return output, arg


def _scan_taps(
    source: torch.Tensor,
    dims: tuple[PoolGeometry, PoolGeometry],
    inside: bool,
    nan_aware: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass per window position over preallocated buffers, using only vectorised ops.

    Eager CPU ``where``/``masked_fill`` are several times slower than arithmetic, so the argmax
    is tracked arithmetically: a tap is taken only when it beats the running maximum, taps are
    scanned in increasing order, so the last take, ``max_k(k * took_k)``, is the argmax.
    """
    gh, gw = dims
    taps = gh.kernel * gw.kernel
    first = source[..., gh.taps(0), gw.taps(0)]
    arg = torch.empty_like(first, dtype=torch.uint8 if taps <= 256 else torch.int32)
    if inside:  # every window starts at tap 0
        best, start = first.clone(), 1
        arg.zero_()
    else:
        best, start = torch.full_like(first, -math.inf), 0
        arg.copy_(first_valid_tap(dims, source.device).expand(first.shape))
    took, stamp = torch.empty_like(arg, dtype=torch.bool), torch.empty_like(arg)
    for k in range(start, taps):
        value = source[..., gh.taps(k // gw.kernel), gw.taps(k % gw.kernel)]
        torch.gt(value, best, out=took)
        if nan_aware:
            took.logical_or_(value.isnan())
            torch.where(took, value, best, out=best)
        else:
            torch.maximum(best, value, out=best)
        marks = took.view(torch.uint8) if arg.dtype == torch.uint8 else took.to(arg.dtype)
        torch.maximum(arg, torch.mul(marks, k, out=stamp), out=arg)
    return best, arg


def _plane_indices(arg: torch.Tensor, dims: tuple[PoolGeometry, PoolGeometry]) -> torch.Tensor:
    """Turn window positions into indices into the flattened ``H * W`` input plane, like ATen."""
    gh, gw = dims
    device = arg.device
    origin = gh.starts(device)[:, None] * gw.size + gw.starts(device)[None, :]
    return torch.take(window_offsets(dims, device), arg.long()).add_(origin)


class _AvgPool2d(torch.autograd.Function):
    """Average pooling over 4-D input; backward needs only shapes and the per-window divisor."""

    @staticmethod
    def forward(ctx, input, dims, count_include_pad: bool, divisor_override: int | None):
        gh, gw = dims
        source = pad_input(input, dims, 0.0)
        total = source[..., gh.taps(0), gw.taps(0)].to(opmath_dtype(input.dtype), copy=True)
        for k in range(1, gh.kernel * gw.kernel):
            total.add_(source[..., gh.taps(k // gw.kernel), gw.taps(k % gw.kernel)])
        divisor = _avg_divisor(dims, count_include_pad, divisor_override, total)
        ctx.dims, ctx.divisor, ctx.input_shape = dims, divisor, input.shape
        ctx.input_format = layout_of(input)
        return (total / divisor).to(input.dtype)

    @staticmethod
    @first_order_only
    def backward(ctx, grad: torch.Tensor):
        gh, gw = ctx.dims
        share = grad / ctx.divisor
        n, c = ctx.input_shape[:2]
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
