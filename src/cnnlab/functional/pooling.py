"""Max and average pooling built from strided views of the input, with hand-written backward.

Each window position ``(kh, kw)`` is one strided slice of the (padded) input, so a forward pass
is ``kh * kw`` elementwise ops over output-sized tensors: no unfold, no windows copy, and every
memory layout (channels_last from a conv, transposed views) works unchanged. Max pooling scans
the window positions in PyTorch's order with PyTorch's update rule, so ties and NaNs pick the
same element as the built-in kernel; it saves only that window position (one byte per output)
and its backward scatter-adds each gradient there. Average pooling saves nothing but shapes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cnnlab.functional._utils import opmath_dtype, pair

IntPair = int | Sequence[int]


@dataclass(frozen=True)
class PoolGeometry:
    """Window arithmetic for one spatial dimension, following ATen's ``pooling_output_shape``."""

    size: int
    kernel: int
    stride: int
    padding: int
    dilation: int
    out: int

    @classmethod
    def build(
        cls, size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool
    ) -> PoolGeometry:
        span = size + 2 * padding - dilation * (kernel - 1) - 1
        out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
        # In ceil mode the last window must still start inside the input or the left padding.
        if ceil_mode and (out - 1) * stride >= size + padding:
            out -= 1
        return cls(size, kernel, stride, padding, dilation, out)

    @property
    def padded(self) -> int:
        """Length the padded input needs so that every window, incl. ceil-mode overhang, fits."""
        return max(self.size + self.padding, (self.out - 1) * self.stride + self.extent)

    @property
    def extent(self) -> int:
        return self.dilation * (self.kernel - 1) + 1

    def taps(self, k: int) -> slice:
        """Slice of the padded input holding window position ``k`` of every output."""
        start = k * self.dilation
        return slice(start, start + (self.out - 1) * self.stride + 1, self.stride)

    def starts(self, device: torch.device) -> torch.Tensor:
        return torch.arange(self.out, device=device) * self.stride - self.padding


def _check_input(op: str, input: torch.Tensor) -> None:
    if input.dim() not in (3, 4) or any(s == 0 for s in input.shape[-3:]):
        raise ValueError(
            f"{op} expected a 3-D (C, H, W) or 4-D (N, C, H, W) input with non-zero C, H, W, "
            f"got shape {tuple(input.shape)}"
        )
    if not input.is_floating_point():
        raise TypeError(f"{op} expected a floating-point input, got {input.dtype}")


def _geometry(
    op: str,
    input: torch.Tensor,
    kernel_size: IntPair,
    stride: IntPair | None,
    padding: IntPair,
    dilation: IntPair,
    ceil_mode: bool,
) -> tuple[PoolGeometry, PoolGeometry]:
    """Validate the pooling arguments like ATen does, with messages that say what to change."""
    kernel = pair(kernel_size, "kernel_size")
    # torch.nn stores "no stride" as None or, in older pickles, an empty list.
    step = pair(stride, "stride") if stride not in (None, [], ()) else kernel
    pad, dil = pair(padding, "padding"), pair(dilation, "dilation")
    for name, value in (("kernel_size", kernel), ("stride", step), ("dilation", dil)):
        if min(value) <= 0:
            raise ValueError(f"{op}: {name} must be positive, got {value}")
    if min(pad) < 0 or any(p > k // 2 for p, k in zip(pad, kernel, strict=True)):
        raise ValueError(
            f"{op}: padding must be between 0 and half the kernel size, got padding={pad} "
            f"for kernel_size={kernel}"
        )
    dims = tuple(
        PoolGeometry.build(size, k, s, p, d, ceil_mode)
        for size, k, s, p, d in zip(input.shape[-2:], kernel, step, pad, dil, strict=True)
    )
    if min(g.out for g in dims) < 1:
        raise ValueError(
            f"{op}: kernel_size={kernel} (dilation={dil}) does not fit the input of spatial "
            f"size {tuple(input.shape[-2:])} with padding={pad}; use a smaller kernel or more "
            f"padding"
        )
    return dims  # type: ignore[return-value]


def _padded(
    input: torch.Tensor, dims: tuple[PoolGeometry, PoolGeometry], fill: float
) -> torch.Tensor:
    """The input surrounded by ``fill``, keeping its memory layout; the input itself if no pad."""
    gh, gw = dims
    if gh.padded == gh.size and gw.padded == gw.size:
        return input
    fmt = _memory_format(input)
    shape = (*input.shape[:2], gh.padded, gw.padded)
    out = input.new_full(shape, fill).contiguous(memory_format=fmt)
    out[..., gh.padding : gh.padding + gh.size, gw.padding : gw.padding + gw.size] = input
    return out


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    """channels_last when ``t`` is laid out that way (a conv's output often is), else NCHW."""
    if t.is_contiguous() or not t.is_contiguous(memory_format=torch.channels_last):
        return torch.contiguous_format
    return torch.channels_last


def _window_offsets(dims: tuple[PoolGeometry, PoolGeometry], device: torch.device) -> torch.Tensor:
    """Flat ``ih * W + iw`` offset of each window position relative to the window's origin."""
    gh, gw = dims
    kh = torch.arange(gh.kernel, device=device) * gh.dilation
    kw = torch.arange(gw.kernel, device=device) * gw.dilation
    return (kh[:, None] * gw.size + kw[None, :]).flatten()


def _first_in_bounds(g: PoolGeometry, device: torch.device) -> torch.Tensor:
    """Per output, the smallest tap ``k`` with ``start + k * dilation >= 0``."""
    before = (-g.starts(device)).clamp_min(0)
    return (before + g.dilation - 1).div(g.dilation, rounding_mode="floor")


def _first_valid_tap(dims: tuple[PoolGeometry, PoolGeometry], device: torch.device) -> torch.Tensor:
    """Per output, the first window position inside the input: where ATen's scan starts."""
    first_h, first_w = (_first_in_bounds(g, device) for g in dims)
    return first_h[:, None] * dims[1].kernel + first_w[None, :]


def _empty_windows(dims: tuple[PoolGeometry, PoolGeometry], device: torch.device) -> torch.Tensor:
    """(OH, OW) mask of windows whose taps all miss the input (dilation can skip over it).

    ATen outputs -inf there with an index past the window's row; such windows depend on no
    input, so their gradient is dropped rather than scattered to that index.
    """
    empty = []
    for g in dims:
        first = _first_in_bounds(g, device)
        empty.append((first >= g.kernel) | (g.starts(device) + first * g.dilation >= g.size))
    return empty[0][:, None] | empty[1][None, :]


def _inside_input(dims: tuple[PoolGeometry, PoolGeometry]) -> bool:
    """Whether every window lies inside the unpadded input (e.g. the ubiquitous 2x2 / stride 2).

    Then the scan reads the input in place and every window starts at its first tap, which
    skips the padded copy and the -inf initialisation.
    """
    return all(g.padding == 0 and g.padded == g.size for g in dims)


class _MaxPool2d(torch.autograd.Function):
    """Max pooling over 4-D input; saves only each window's argmax position (one byte each)."""

    @staticmethod
    def forward(ctx, input, dims: tuple[PoolGeometry, PoolGeometry], return_indices: bool):
        inside = _inside_input(dims)
        output, arg = _scan_max(_padded(input, dims, -math.inf), dims, inside)
        ctx.dims, ctx.input_shape = dims, input.shape
        ctx.input_format = _memory_format(input)
        ctx.save_for_backward(arg)
        if not return_indices:
            return output
        indices = _plane_indices(arg, dims)
        ctx.mark_non_differentiable(indices)
        return output, indices

    @staticmethod
    def backward(ctx, grad: torch.Tensor, *_grad_indices: torch.Tensor):
        (arg,) = ctx.saved_tensors
        indices = _plane_indices(arg, ctx.dims)
        empty = _empty_windows(ctx.dims, grad.device)
        if empty.any():
            grad, indices = grad.masked_fill(empty, 0), indices.masked_fill(empty, 0)
        return _scatter_to_plane(grad, indices, ctx.input_shape, ctx.input_format), None, None


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
    taken. The common NaN-free case skips the NaN test (fewer passes over memory); NaN still
    propagates through ``maximum``, and only then is the exact rule replayed.
    """
    output, arg = _scan_taps(source, dims, inside, nan_aware=False)
    if output.isnan().any():
        output, arg = _scan_taps(source, dims, inside, nan_aware=True)
    return output, arg


def _scan_taps(
    source: torch.Tensor, dims: tuple[PoolGeometry, PoolGeometry], inside: bool, nan_aware: bool
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
        arg.copy_(_first_valid_tap(dims, source.device).expand(first.shape))
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
    return torch.take(_window_offsets(dims, device), arg.long()).add_(origin)


class _AvgPool2d(torch.autograd.Function):
    """Average pooling over 4-D input; backward needs only shapes and the per-window divisor."""

    @staticmethod
    def forward(ctx, input, dims, count_include_pad: bool, divisor_override: int | None):
        gh, gw = dims
        source = _padded(input, dims, 0.0)
        total = source[..., gh.taps(0), gw.taps(0)].to(opmath_dtype(input.dtype), copy=True)
        for k in range(1, gh.kernel * gw.kernel):
            total.add_(source[..., gh.taps(k // gw.kernel), gw.taps(k % gw.kernel)])
        divisor = _avg_divisor(dims, count_include_pad, divisor_override, total)
        ctx.dims, ctx.divisor, ctx.input_shape = dims, divisor, input.shape
        ctx.input_format = _memory_format(input)
        return (total / divisor).to(input.dtype)

    @staticmethod
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


def _batched(input: torch.Tensor) -> tuple[torch.Tensor, bool]:
    return (input, False) if input.dim() == 4 else (input.unsqueeze(0), True)


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
    _check_input("max_pool2d", input)
    dims = _geometry("max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode)
    batched, unbatched = _batched(input)
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
    _check_input("avg_pool2d", input)
    if divisor_override is not None and divisor_override == 0:
        raise ValueError("avg_pool2d: divisor_override must be non-zero (or None), got 0")
    dims = _geometry("avg_pool2d", input, kernel_size, stride, padding, 1, ceil_mode)
    batched, unbatched = _batched(input)
    output = _AvgPool2d.apply(batched, dims, count_include_pad, divisor_override)
    return output.squeeze(0) if unbatched else output
