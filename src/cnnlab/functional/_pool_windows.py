"""Window geometry shared by max and average pooling: output sizes, padding, validation.

Follows ATen's ``pooling_output_shape`` and argument checks exactly, so the hand-written pools
accept, reject and size their outputs the way ``torch.nn`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cnnlab.functional._utils import pair

IntPair = int | Sequence[int]
Dims = tuple["PoolGeometry", "PoolGeometry"]


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


def check_input(op: str, input: torch.Tensor) -> None:
    if input.dim() not in (3, 4) or any(s == 0 for s in input.shape[-3:]):
        raise ValueError(
            f"{op} expected a 3-D (C, H, W) or 4-D (N, C, H, W) input with non-zero C, H, W, "
            f"got shape {tuple(input.shape)}"
        )
    if not input.is_floating_point():
        raise TypeError(f"{op} expected a floating-point input, got {input.dtype}")


def pool_geometry(
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


def pad_input(
    input: torch.Tensor, dims: tuple[PoolGeometry, PoolGeometry], fill: float
) -> torch.Tensor:
    """The input surrounded by ``fill``, keeping its memory layout; the input itself if no pad."""
    gh, gw = dims
    if gh.padded == gh.size and gw.padded == gw.size:
        return input
    fmt = layout_of(input)
    shape = (*input.shape[:2], gh.padded, gw.padded)
    out = input.new_full(shape, fill).contiguous(memory_format=fmt)
    out[..., gh.padding : gh.padding + gh.size, gw.padding : gw.padding + gw.size] = input
    return out


def layout_of(t: torch.Tensor) -> torch.memory_format:
    """channels_last when ``t`` is laid out that way (a conv's output often is), else NCHW."""
    if t.is_contiguous() or not t.is_contiguous(memory_format=torch.channels_last):
        return torch.contiguous_format
    return torch.channels_last


def spread_over_input(
    share: torch.Tensor, shape: Sequence[int], dtype: torch.dtype, fmt: torch.memory_format
) -> torch.Tensor:
    """Backward of a global pool: each (N, C, 1, 1) ``share`` copied to every pixel of its
    plane, as a ``dtype`` tensor of ``shape`` in layout ``fmt`` (one pass, no expanded view)."""
    grad_input = torch.empty(tuple(shape), dtype=dtype, device=share.device, memory_format=fmt)
    return grad_input.copy_(share.expand(tuple(shape)))


def window_offsets(dims: tuple[PoolGeometry, PoolGeometry], device: torch.device) -> torch.Tensor:
    """Flat ``ih * W + iw`` offset of each window position relative to the window's origin."""
    gh, gw = dims
    kh = torch.arange(gh.kernel, device=device) * gh.dilation
    kw = torch.arange(gw.kernel, device=device) * gw.dilation
    return (kh[:, None] * gw.size + kw[None, :]).flatten()


def first_in_bounds(g: PoolGeometry, device: torch.device) -> torch.Tensor:
    """Per output, the smallest tap ``k`` with ``start + k * dilation >= 0``."""
    before = (-g.starts(device)).clamp_min(0)
    return (before + g.dilation - 1).div(g.dilation, rounding_mode="floor")


def first_valid_tap(dims: tuple[PoolGeometry, PoolGeometry], device: torch.device) -> torch.Tensor:
    """Per output, the first window position inside the input: where ATen's scan starts."""
    first_h, first_w = (first_in_bounds(g, device) for g in dims)
    return first_h[:, None] * dims[1].kernel + first_w[None, :]


def any_empty_window(dims: tuple[PoolGeometry, PoolGeometry]) -> bool:
    """Whether :func:`empty_windows` has any True entry, decided from the geometry on the host."""
    for g in dims:
        for o in range(g.out):
            start = o * g.stride - g.padding
            first = (max(0, -start) + g.dilation - 1) // g.dilation
            if first >= g.kernel or start + first * g.dilation >= g.size:
                return True
    return False


def empty_windows(dims: tuple[PoolGeometry, PoolGeometry], device: torch.device) -> torch.Tensor:
    """(OH, OW) mask of windows whose taps all miss the input (dilation can skip over it).

    ATen outputs -inf there with an index past the window's row; such windows depend on no
    input, so their gradient is dropped rather than scattered to that index.
    """
    empty = []
    for g in dims:
        first = first_in_bounds(g, device)
        empty.append((first >= g.kernel) | (g.starts(device) + first * g.dilation >= g.size))
    return empty[0][:, None] | empty[1][None, :]


def inside_input(dims: tuple[PoolGeometry, PoolGeometry]) -> bool:
    """Whether every window lies inside the unpadded input (e.g. the ubiquitous 2x2 / stride 2).

    Then the scan reads the input in place and every window starts at its first tap, which
    skips the padded copy and the -inf initialisation.
    """
    return all(g.padding == 0 and g.padded == g.size for g in dims)


def disjoint_windows(dims: tuple[PoolGeometry, PoolGeometry]) -> bool:
    """Whether no input pixel lies in two windows and no window reaches into padding.

    True for the ubiquitous 2x2 / stride 2 pool. Then each window position ``k`` is one strided
    slice of the input gradient that no other window writes, so routing needs no scatter.
    """
    return inside_input(dims) and all(g.dilation == 1 and g.stride >= g.kernel for g in dims)


def to_batched(input: torch.Tensor) -> tuple[torch.Tensor, bool]:
    return (input, False) if input.dim() == 4 else (input.unsqueeze(0), True)
