"""Max pooling's arithmetic: the window scan and the gradient routing.

Shared by :class:`cnnlab.functional.pooling._MaxPool2d`, which calls it directly in eager mode,
and the custom ops of :mod:`cnnlab.functional._kernels`, which hand the same code to
``torch.compile`` as opaque kernels.
"""

from __future__ import annotations

import math

import torch

from cnnlab.functional._pool_windows import (
    Dims,
    any_empty_window,
    disjoint_windows,
    empty_windows,
    first_valid_tap,
    inside_input,
    pad_input,
    window_offsets,
)
from cnnlab.functional._utils import host_checks_allowed


def max_pool_forward(input: torch.Tensor, dims: Dims) -> tuple[torch.Tensor, torch.Tensor]:
    """(max of every window, its window position as uint8, or int32 beyond 256 positions)."""
    return _scan_max(pad_input(input, dims, -math.inf), dims, inside_input(dims))


def position_dtype(taps: int) -> torch.dtype:
    """The dtype of a window position: one byte up to 256 positions per window."""
    return torch.uint8 if taps <= 256 else torch.int32


def max_pool_backward(
    grad: torch.Tensor,
    arg: torch.Tensor,
    dims: Dims,
    input_shape: torch.Size,
    input_format: torch.memory_format,
) -> torch.Tensor:
    """dL/dinput: each output's gradient sent to the pixel its window took."""
    if disjoint_windows(dims):
        return _route_to_taps(grad, arg, dims, input_shape, input_format)
    indices = plane_indices(arg, dims)
    if any_empty_window(dims):  # geometry only: decided on the host, no sync
        empty = empty_windows(dims, grad.device)
        grad, indices = grad.masked_fill(empty, 0), indices.masked_fill(empty, 0)
    return _scatter_to_plane(grad, indices, input_shape, input_format)


def _route_to_taps(
    grad: torch.Tensor,
    arg: torch.Tensor,
    dims: Dims,
    input_shape: torch.Size,
    input_format: torch.memory_format,
) -> torch.Tensor:
    """Gradient routing for disjoint windows: slice ``k`` gets ``grad * [argmax == k]``.

    ``kh * kw`` elementwise writes into strided views replace ATen's scatter; pixels no window
    covers (a remainder row or column, or stride > kernel) are the only ones zero-filled.
    """
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


def _scan_max(source: torch.Tensor, dims: Dims, inside: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Max and argmax (window position) of every window, choosing the element ATen chooses.

    ATen starts each window at its first in-bounds tap and then takes a value if it is strictly
    larger or NaN, so ties keep the first maximum and the last NaN wins; padding (-inf) is never
    taken. In CPU eager mode the common NaN-free case skips the NaN test (fewer passes over
    memory); NaN still propagates through ``maximum``, and only then is the exact rule replayed.
    On a GPU that test would be a host sync, so the exact rule always runs there. (Compiled
    graphs call this code through a custom operator, outside dynamo's tracing.)
    """
    if not host_checks_allowed(source):
        return _scan_taps(source, dims, inside, nan_aware=True)
    output, arg = _scan_taps(source, dims, inside)
    if output.isnan().any():
        output, arg = _scan_taps(source, dims, inside, nan_aware=True)
    return output, arg


def _scan_taps(
    source: torch.Tensor,
    dims: Dims,
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
    arg = torch.empty_like(first, dtype=position_dtype(taps))
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


def plane_indices(arg: torch.Tensor, dims: Dims) -> torch.Tensor:
    """Turn window positions into indices into the flattened ``H * W`` input plane, like ATen."""
    gh, gw = dims
    device = arg.device
    origin = gh.starts(device)[:, None] * gw.size + gw.starts(device)[None, :]
    return torch.take(window_offsets(dims, device), arg.long()).add_(origin)
