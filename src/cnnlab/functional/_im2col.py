"""im2col / col2im: the data rearrangement that turns a convolution into one matrix product.

Every tensor here is channels-last (N, H, W, C) in memory. With the channel axis innermost, one
kernel position of one patch is a contiguous run of C numbers, so the patch matrix is built by a
single strided copy and the GEMM result *is* the output feature map, already in channels-last
order, with no transpose. Columns are ordered (kh, kw, C/groups) and rows (N, Ho, Wo); the
leading axis is the group, so a grouped convolution is one batched GEMM.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

Pair = tuple[int, int]
Padding4 = tuple[int, int, int, int]  # (top, bottom, left, right)

#: Bytes of patch matrix built at a time on the CPU. Patches are kh*kw times larger than the
#: input, so a whole batch's worth (150 MB for CIFAR's second conv at batch 256) would dominate
#: the step's memory. Chunks this size stay below glibc's mmap threshold, so after the first step
#: they are recycled from the heap instead of being page-faulted in afresh, and the GEMM runs
#: from cache.
CPU_CHUNK_BYTES = 4 * 2**20
#: On a GPU the cache argument does not hold and every chunk is a kernel launch plus a smaller,
#: less efficient GEMM; the patch matrix is built for the whole batch unless it would exceed this.
GPU_CHUNK_BYTES = 2 * 2**30


def chunk_bytes(device: torch.device) -> int:
    """How many bytes of patch matrix to build at once on ``device``."""
    return CPU_CHUNK_BYTES if device.type == "cpu" else GPU_CHUNK_BYTES


def batch_chunks(n: int, bytes_per_image: int, device: torch.device) -> list[slice]:
    """Slices of the batch whose patch matrices take about :func:`chunk_bytes` each.

    Compiled graphs run this code too, inside the custom operators of
    :mod:`cnnlab.functional._kernels`, so the chunks are the same there.
    """
    step = max(1, chunk_bytes(device) // max(1, bytes_per_image))
    return [slice(start, min(n, start + step)) for start in range(0, n, step)]


def workspace(like: torch.Tensor, chunks: list[slice], numel_per_image: int) -> torch.Tensor:
    """One flat buffer that every chunk's patch matrix is built in, in turn.

    A fresh tensor per chunk is a fresh few MiB that the CPU first page-faults in and then finds
    out of cache; writing each chunk over the last one's memory skips both. With
    :func:`padded_chunks`: ResNet-20's 16-channel 3x3 layer 8.8 -> 6.9 ms forward, 16.3 -> 14.4 ms
    backward, batch 128, 2 threads.
    """
    return like.new_empty(_largest(chunks) * numel_per_image)


def _largest(chunks: list[slice]) -> int:
    """Images in the largest of ``chunks``: what a buffer shared by all of them must hold."""
    return max((chunk.stop - chunk.start for chunk in chunks), default=0)


def from_workspace(
    like: torch.Tensor, shape: tuple[int, ...], space: torch.Tensor | None
) -> torch.Tensor:
    """The first elements of ``space`` (a :func:`workspace`) seen as ``shape``, else a new tensor."""
    if space is None:
        return like.new_empty(shape)
    return space[: math.prod(shape)].view(shape)


def output_size(size: int, kernel: int, stride: int, dilation: int) -> int:
    """Number of kernel placements along one axis of an (already padded) input."""
    return (size - dilation * (kernel - 1) - 1) // stride + 1


def padded_shape(x_shape: Sequence[int], padding: Padding4) -> tuple[int, int, int, int]:
    """(N, Hp, Wp, C) of an (N, C, H, W) input padded by ``padding``."""
    n, c, h, w = x_shape
    top, bottom, left, right = padding
    return n, h + top + bottom, w + left + right, c


def padded_chunks(
    x: torch.Tensor, padding: Padding4, chunks: list[slice]
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Each of ``chunks`` of ``x`` (N, C, H, W, any layout), zero-padded, as an (m, Hp, Wp, C)
    contiguous tensor: the only copy of the input made before the patch gather.

    Every chunk is written over the last one in a single buffer, so its border is zeroed once
    and the copy lands in memory that is mapped and in cache (see :func:`workspace`); use each
    chunk before asking for the next. With no padding, a channels-last ``x`` is not copied.
    """
    nhwc = x.permute(0, 2, 3, 1)
    if not any(padding) and nhwc.is_contiguous():
        yield from ((chunk, nhwc[chunk]) for chunk in chunks)
        return
    _, hp, wp, c = padded_shape(x.shape, padding)
    (top, _, left, _), (h, w) = padding, nhwc.shape[1:3]
    buffer = x.new_empty((_largest(chunks), hp, wp, c))
    # Zero only the border: filling the whole buffer would write every pixel twice.
    buffer[:, :top].zero_()
    buffer[:, top + h :].zero_()
    buffer[:, top : top + h, :left].zero_()
    buffer[:, top : top + h, left + w :].zero_()
    for chunk in chunks:
        padded = buffer[: chunk.stop - chunk.start]
        padded[:, top : top + h, left : left + w] = nhwc[chunk]
        yield chunk, padded


def im2col(
    padded: torch.Tensor,
    kernel: Pair,
    stride: Pair,
    dilation: Pair,
    groups: int,
    space: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gather every receptive field of ``padded`` (N, Hp, Wp, C) into rows of a matrix.

    Returns (groups, N*Ho*Wo, kh*kw*C/groups). The patches are first described as an
    ``as_strided`` view (no copy: a patch is just a different walk over the same memory), then
    one copy lays them out for the GEMM. Call it on a :func:`batch_chunks` slice of the batch
    to bound its size, building it in ``space`` (a :func:`workspace`) where one is given.
    """
    n, hp, wp, c = padded.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    ho, wo = output_size(hp, kh, sh, dh), output_size(wp, kw, sw, dw)
    cg = c // groups
    s_n, s_h, s_w, s_c = padded.stride()
    # No explicit storage offset: as_strided keeps the view's own (a batch chunk starts inside
    # the storage), and reading it would be a graph break under torch.compile.
    patches = padded.as_strided(
        (groups, n, ho, wo, kh, kw, cg),
        (cg * s_c, s_n, s_h * sh, s_w * sw, s_h * dh, s_w * dw, s_c),
    )
    cols = from_workspace(padded, (groups, n * ho * wo, kh * kw * cg), space)
    cols.view(patches.shape).copy_(patches)
    return cols


def im2col_by_column(
    padded: torch.Tensor,
    kernel: Pair,
    stride: Pair,
    dilation: Pair,
    space: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`im2col`'s matrix transposed, for one group: (kh*kw*C, N*Ho*Wo).

    Same numbers, other order: a row of this matrix is one input channel at one kernel position
    seen by every output pixel, so the copy runs along the image's width (Wo numbers per run)
    instead of over one pixel's channels (kw*C per run). Strided copies with short runs are
    slow on the CPU: for 3-8 channels this order builds the matrix several times faster.
    """
    n, hp, wp, c = padded.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    ho, wo = output_size(hp, kh, sh, dh), output_size(wp, kw, sw, dw)
    s_n, s_h, s_w, s_c = padded.stride()
    patches = padded.as_strided(
        (kh, kw, c, n, ho, wo), (s_h * dh, s_w * dw, s_c, s_n, s_h * sh, s_w * sw)
    )
    cols = from_workspace(padded, (kh, kw, c, n, ho, wo), space)
    cols.copy_(patches)
    return cols.view(kh * kw * c, n * ho * wo)


def kernel_row_im2col(
    padded: torch.Tensor, kw: int, sw: int, dw: int, space: torch.Tensor | None = None
) -> torch.Tensor:
    """The pixels one kernel *row* covers, for every input row and output column.

    Returns (N, Hp*Wo, kw*C), rows ordered (input row, output column): kw/(kh*kw) of
    :func:`im2col`'s copy (a third for 3x3 kernels). With stride 1 in height, the patches of
    kernel row ``i`` for every output are then the contiguous block of rows that starts at
    ``i * dh * Wo``, a GEMM operand as it stands, so a convolution is ``kh`` GEMMs that
    accumulate into the output.
    """
    n, hp, wp, c = padded.shape
    wo = output_size(wp, kw, sw, dw)
    s_n, s_h, s_w, s_c = padded.stride()
    pixels = padded.as_strided((n, hp, wo, kw, c), (s_n, s_h, s_w * sw, s_w * dw, s_c))
    rows = from_workspace(padded, (n, hp, wo, kw, c), space)
    rows.copy_(pixels)
    return rows.view(n, hp * wo, kw * c)


def col2im_add_(
    image: torch.Tensor, cols: torch.Tensor, kernel: Pair, stride: Pair, dilation: Pair
) -> torch.Tensor:
    """Adjoint of :func:`im2col`: add every column entry back onto the pixel it was read from.

    ``cols`` is (groups, N*Ho*Wo, kh*kw*C/groups) for the images of ``image`` (N, Hp, Wp, C),
    which is updated in place and returned. Pixels shared by overlapping patches receive the sum
    of their contributions -- which is exactly the gradient of a gather. One strided slice-add
    per kernel position (kh*kw of them), each covering all patches at once, instead of a
    scatter per element.
    """
    n, hp, wp, c = image.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    ho, wo = output_size(hp, kh, sh, dh), output_size(wp, kw, sw, dw)
    groups = cols.shape[0]
    patches = cols.view(groups, n, ho, wo, kh, kw, c // groups).permute(1, 2, 3, 4, 5, 0, 6)
    image_by_group = image.view(n, hp, wp, groups, c // groups)
    for i in range(kh):
        rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
        for j in range(kw):
            columns = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
            image_by_group[:, rows, columns] += patches[:, :, :, i, j]
    return image
