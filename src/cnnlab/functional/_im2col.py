"""im2col / col2im: the data rearrangement that turns a convolution into one matrix product.

Every tensor here is channels-last (N, H, W, C) in memory. With the channel axis innermost, one
kernel position of one patch is a contiguous run of C numbers, so the patch matrix is built by a
single strided copy and the GEMM result *is* the output feature map, already in channels-last
order, with no transpose. Columns are ordered (kh, kw, C/groups) and rows (N, Ho, Wo); the
leading axis is the group, so a grouped convolution is one batched GEMM.
"""

from __future__ import annotations

import math
import threading

import torch

Pair = tuple[int, int]
Padding4 = tuple[int, int, int, int]  # (top, bottom, left, right)

_workspaces = threading.local()


def scratch(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A reusable uninitialised buffer for a patch matrix that lives only for one GEMM.

    Patch matrices are large (kh*kw times the input) and short-lived. On CPU a fresh buffer of
    that size comes straight from the OS and is page-faulted in on first write, which costs
    more than the im2col copy itself; reusing one per thread and dtype (Caffe's ``col_buffer``)
    removes that. Under grad mode (double backward) the buffer could be saved by autograd and
    later overwritten, so a fresh tensor is returned then, as on GPUs, whose caching allocator
    already recycles memory.
    """
    numel = math.prod(shape)
    if like.device.type != "cpu" or torch.is_grad_enabled():
        return like.new_empty(shape)
    buffers = _workspaces.__dict__
    buffer = buffers.get(like.dtype)
    if buffer is None or buffer.numel() < numel:
        # A buffer born under inference_mode (e.g. Lightning's validation) could not be
        # written to by a later training step, so always allocate a normal tensor.
        with torch.inference_mode(False):
            buffer = buffers[like.dtype] = like.new_empty(numel)
    return buffer[:numel].view(shape)


def output_size(size: int, kernel: int, stride: int, dilation: int) -> int:
    """Number of kernel placements along one axis of an (already padded) input."""
    return (size - dilation * (kernel - 1) - 1) // stride + 1


def pad_channels_last(x: torch.Tensor, padding: Padding4) -> torch.Tensor:
    """Return ``x`` (N, C, H, W, any layout) as a zero-padded (N, Hp, Wp, C) contiguous tensor.

    This is the only copy of the input the forward pass makes before the patch gather; when there
    is no padding and ``x`` is already channels-last it is free.
    """
    top, bottom, left, right = padding
    nhwc = x.permute(0, 2, 3, 1)
    if not any(padding) and nhwc.is_contiguous():
        return nhwc
    n, h, w, c = nhwc.shape
    padded = x.new_empty((n, h + top + bottom, w + left + right, c))
    padded[:, top : top + h, left : left + w] = nhwc
    # Zero only the border: filling the whole buffer first would write every pixel twice.
    padded[:, :top].zero_()
    padded[:, top + h :].zero_()
    padded[:, top : top + h, :left].zero_()
    padded[:, top : top + h, left + w :].zero_()
    return padded


def im2col(
    padded: torch.Tensor, kernel: Pair, stride: Pair, dilation: Pair, groups: int
) -> torch.Tensor:
    """Gather every receptive field of ``padded`` (N, Hp, Wp, C) into rows of a matrix.

    Returns (groups, N*Ho*Wo, kh*kw*C/groups). The patches are first described as an
    ``as_strided`` view (no copy: a patch is just a different walk over the same memory), then
    one copy into a :func:`scratch` buffer lays them out for the GEMM. The result is only valid
    until the next call on this thread: use it and drop it.
    """
    n, hp, wp, c = padded.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    ho, wo = output_size(hp, kh, sh, dh), output_size(wp, kw, sw, dw)
    cg = c // groups
    s_n, s_h, s_w, s_c = padded.stride()
    patches = padded.as_strided(
        (groups, n, ho, wo, kh, kw, cg),
        (cg * s_c, s_n, s_h * sh, s_w * sw, s_h * dh, s_w * dw, s_c),
        padded.storage_offset(),
    )
    cols = scratch((groups, n * ho * wo, kh * kw * cg), padded)
    cols.view(patches.shape).copy_(patches)
    return cols


def col2im(
    cols: torch.Tensor,
    padded_shape: tuple[int, int, int, int],
    kernel: Pair,
    stride: Pair,
    dilation: Pair,
) -> torch.Tensor:
    """Adjoint of :func:`im2col`: add every column entry back onto the pixel it was read from.

    ``cols`` is (groups, N*Ho*Wo, kh*kw*C/groups); returns (N, Hp, Wp, C). Pixels shared by
    overlapping patches receive the sum of their contributions -- which is exactly the gradient
    of a gather. One strided slice-add per kernel position (kh*kw of them), each covering all
    patches at once, instead of a scatter per element.
    """
    n, hp, wp, c = padded_shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    ho, wo = output_size(hp, kh, sh, dh), output_size(wp, kw, sw, dw)
    groups = cols.shape[0]
    patches = cols.view(groups, n, ho, wo, kh, kw, c // groups).permute(1, 2, 3, 4, 5, 0, 6)
    image = cols.new_zeros(padded_shape)
    image_by_group = image.view(n, hp, wp, groups, c // groups)
    for i in range(kh):
        rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
        for j in range(kw):
            columns = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
            image_by_group[:, rows, columns] += patches[:, :, :, i, j]
    return image
