"""The convolution's arithmetic: im2col + GEMM forward, and the two gradients.

Shared by :class:`cnnlab.functional.conv.Conv2dFunction`, which calls it directly in eager mode,
and the custom ops of :mod:`cnnlab.functional._kernels`, which hand the very same code to
``torch.compile`` as opaque kernels. Every tensor built here is channels-last (see
:mod:`cnnlab.functional._im2col`); inputs may come in either layout.

The input is zero-padded a batch chunk at a time, into the same memory as the chunk before,
just ahead of its patch matrix: padding it whole was one more pass over fresh memory per
convolution, and a padded copy that backward kept alive beside the input itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from cnnlab.functional._im2col import (
    Padding4,
    batch_chunks,
    col2im_add_,
    from_workspace,
    im2col,
    im2col_by_column,
    kernel_row_im2col,
    output_size,
    padded_chunks,
    padded_shape,
    workspace,
)
from cnnlab.functional._utils import opmath_dtype

Pair = tuple[int, int]
#: Called with each batch chunk and its kernel-row patch matrix.
ChunkHook = Callable[[slice, torch.Tensor], None]


class ConvGeometry(NamedTuple):
    """Everything about a convolution but its tensors, as the Function receives it."""

    stride: Pair
    padding: Padding4  # (top, bottom, left, right)
    dilation: Pair
    groups: int


def conv_forward(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, geometry: ConvGeometry
) -> torch.Tensor:
    """The output (N, O, Ho, Wo), channels-last in memory.

    Backward needs only ``x`` itself (kept by reference, as PyTorch's convolution keeps it):
    rebuilding a patch matrix from it costs one copy and keeps the saved memory at the input's
    size instead of kh*kw times that.
    """
    stride, padding, dilation, groups = geometry
    w_rows = _weight_rows(weight, groups)
    return _correlate(x, w_rows, bias, weight.shape[2:], stride, padding, dilation)


def conv_input_grad(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, geometry: ConvGeometry
) -> torch.Tensor:
    """dL/dx, (N, C, H, W) channels-last in memory; only ``x``'s shape is read."""
    stride, padding, dilation, groups = geometry
    kernel = (weight.shape[2], weight.shape[3])
    full = _full_padding(kernel, padding, dilation)
    if _correlates_back(stride, full):
        # dL/dx is the "full" correlation of G with the 180°-rotated, transposed kernel: the
        # forward routine again, which beats summing patches back (col2im).
        flipped = _flipped_weight_rows(weight, groups)
        return _correlate(grad_out, flipped, None, kernel, stride, full, dilation)
    w_rows = _weight_rows(weight, groups)
    grad_rows = _grad_rows(grad_out, groups)
    return _col2im_grad(grad_rows, w_rows, x.shape, kernel, geometry)


def conv_weight_grad(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, geometry: ConvGeometry
) -> torch.Tensor:
    """dL/dW, laid out exactly like the weight (strides included, even of size-1 dims): DDP's
    gradient buckets and fused optimizers expect ``grad.stride() == param.stride()``."""
    out_channels, in_per_group, kh, kw = weight.shape
    grad_rows = _grad_rows(grad_out, geometry.groups)
    rows = _weight_grad_rows(grad_rows, x, (kh, kw), geometry)
    grad_w = torch.empty_like(weight, memory_format=torch.preserve_format)
    grad_w.copy_(rows.view(out_channels, kh, kw, in_per_group).permute(0, 3, 1, 2))
    return grad_w


def conv_backward(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, geometry: ConvGeometry
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/dx, dL/dW) together: where the input gradient is a kernel-row correlation of the
    padded output gradient, the weight gradient reuses that correlation's patch matrix
    (:func:`_backward_by_kernel_rows`) instead of building im2col's, three times larger."""
    stride, padding, dilation, groups = geometry
    full = _full_padding((weight.shape[2], weight.shape[3]), padding, dilation)
    if _correlates_back(stride, full) and _by_kernel_rows(x, groups, 1):
        return _backward_by_kernel_rows(grad_out, x, weight, geometry)
    return (
        conv_input_grad(grad_out, x, weight, geometry),
        conv_weight_grad(grad_out, x, weight, geometry),
    )


def _correlates_back(stride: Pair, full: Padding4) -> bool:
    """Whether dL/dx is a stride-1 correlation of the output gradient padded by ``full``."""
    return stride == (1, 1) and min(full) >= 0


def _grad_rows(grad_out: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, O, Ho, Wo) -> (G, N*Ho*Wo, O/G): a view when ``grad_out`` is channels-last, as it is
    when the next layer is one of ours."""
    n, o, ho, wo = grad_out.shape
    rows = grad_out.permute(0, 2, 3, 1).reshape(n * ho * wo, groups, o // groups)
    return rows.transpose(0, 1)


def _correlate(
    x: torch.Tensor,
    w_rows: torch.Tensor,
    bias: torch.Tensor | None,
    kernel: Sequence[int],
    stride: Pair,
    padding: Padding4,
    dilation: Pair,
    each_chunk: ChunkHook | None = None,
) -> torch.Tensor:
    """im2col + GEMM (batched over groups) of ``x`` padded by ``padding``: the NCHW output,
    channels-last in memory.

    The patch matrix is built a chunk of images at a time (see ``batch_chunks``); each chunk's
    GEMM writes straight into its rows of the output. The output is allocated as the
    channels-last NCHW tensor itself (not a permuted view of an NHWC one): a Function that
    returns a view cannot be followed by an in-place op such as ``ReLU(inplace=True)``.
    """
    groups, out_per_group, k = w_rows.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    n, hp, wp, _ = padded_shape(x.shape, padding)
    ho, wo = output_size(hp, kh, sh, dh), output_size(wp, kw, sw, dw)
    out = torch.empty(
        (n, groups * out_per_group, ho, wo),
        dtype=x.dtype,
        device=x.device,
        memory_format=torch.channels_last,
    )
    if _by_kernel_rows(x, groups, sh):
        _correlate_by_kernel_rows(x, w_rows, bias, (kh, kw), sw, (dh, dw), padding, out, each_chunk)
        return out
    assert each_chunk is None, "only the kernel-row path hands its patch matrix on"
    w_cols = w_rows.transpose(1, 2)
    # (N*Ho*Wo, G*O/G) seen as (G, N*Ho*Wo, O/G): contiguous rows for one group.
    out_rows = out.permute(0, 2, 3, 1).view(n * ho * wo, groups, out_per_group).transpose(0, 1)
    chunks = batch_chunks(n, ho * wo * k * x.element_size(), x.device)
    space = workspace(x, chunks, groups * ho * wo * k)
    for chunk, padded in padded_chunks(x, padding, chunks):
        cols = im2col(padded, (kh, kw), stride, dilation, groups, space)  # (G, m, K)
        target = out_rows[:, chunk.start * ho * wo : chunk.stop * ho * wo]
        if groups > 1:  # bmm cannot write into interleaved group columns
            target.copy_(_gemm(cols, w_cols, bias, groups))
        elif bias is None:
            torch.bmm(cols, w_cols, out=target)
        else:
            torch.baddbmm(bias.view(1, 1, -1), cols, w_cols, out=target)
    return out


def _by_kernel_rows(x: torch.Tensor, groups: int, stride_h: int) -> bool:
    """Whether to correlate a kernel row at a time (:func:`_correlate_by_kernel_rows`).

    On the CPU the patch-matrix copy, not the GEMM, is what sets the pace for few channels: a
    third of it made the 3x3 convolutions of ResNet-20 (16-64 channels) a quarter faster. The
    ``kh`` partial products are rounded into the output one by one, so low precision keeps the
    single GEMM that rounds once; groups and vertical strides keep it too.
    """
    full_precision = x.dtype in (torch.float32, torch.float64)
    return x.device.type == "cpu" and full_precision and groups == 1 and stride_h == 1


def _by_column(x: torch.Tensor, kernel: Pair, geometry: ConvGeometry) -> bool:
    """Whether the weight gradient's patch matrix is built transposed (:func:`im2col_by_column`):
    on the CPU, when that copy's runs (a row of output pixels) are longer than im2col's (one
    patch row's channels), as for the first layer's 3 colour channels."""
    stride, padding, dilation, groups = geometry
    _, _, wp, c = padded_shape(x.shape, padding)
    wo = output_size(wp, kernel[1], stride[1], dilation[1])
    runs_of_channels = kernel[1] * c if dilation[1] == 1 else c
    return x.device.type == "cpu" and groups == 1 and wo > runs_of_channels


def _correlate_by_kernel_rows(
    x: torch.Tensor,
    w_rows: torch.Tensor,
    bias: torch.Tensor | None,
    kernel: Pair,
    stride_w: int,
    dilation: Pair,
    padding: Padding4,
    out: torch.Tensor,
    each_chunk: ChunkHook | None = None,
) -> None:
    """``out = Σ_i rows_i @ W_iᵀ (+ b)`` over kernel rows i, written into ``out`` (channels-last).

    ``rows_i`` is a block of :func:`kernel_row_im2col`'s matrix and ``W_i`` the weight's columns
    for kernel row i, (O, kw*C): the same products as one im2col GEMM, grouped by kernel row.
    ``each_chunk(chunk, rows)`` is then handed each chunk's matrix, for other sums over it.
    """
    (kh, kw), (dh, dw) = kernel, dilation
    n, hp, _, c = padded_shape(x.shape, padding)
    _, o, ho, wo = out.shape
    w_by_row = w_rows[0].view(o, kh, kw * c).permute(1, 2, 0)  # (kh, kw*C, O), a view
    out_rows = out.permute(0, 2, 3, 1).view(n, ho * wo, o)
    chunks = batch_chunks(n, hp * wo * kw * c * x.element_size(), x.device)
    space = workspace(x, chunks, hp * wo * kw * c)
    for chunk, padded in padded_chunks(x, padding, chunks):
        rows = kernel_row_im2col(padded, kw, stride_w, dw, space)  # (m, Hp*Wo, kw*C)
        target = out_rows[chunk]
        for i in range(kh):
            patches = rows[:, i * dh * wo : i * dh * wo + ho * wo]
            weight = w_by_row[i].expand(target.shape[0], -1, -1)
            if i > 0:
                target.baddbmm_(patches, weight)
            elif bias is None:
                torch.bmm(patches, weight, out=target)
            else:
                torch.baddbmm(bias.view(1, 1, -1), patches, weight, out=target)
        if each_chunk is not None:
            each_chunk(chunk, rows)


def _backward_by_kernel_rows(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, geometry: ConvGeometry
) -> tuple[torch.Tensor, torch.Tensor]:
    """dL/dx and dL/dW of a stride-1 convolution from one kernel-row matrix ``R`` of the
    "full"-padded output gradient.

    dL/dx is the kernel-row correlation of ``R`` with the flipped kernel, as in
    :func:`conv_input_grad`. The same ``R`` pairs every input pixel with the gradients it met:
    ``R[n, (h + i*dh)*W + w, j*O + o] = G[n, h + i*dh - ft, w + j*dw - fl, o]``, so for kernel
    row i, ``dW[o, c, kh-1-i, kw-1-j] = Σ_{n,h,w} R[n, (h + i*dh)*W + w, j*O + o] · x[n, h, w, c]``.
    With ``x`` stored with ``reach_h`` zero rows below each image (same row count as ``R``), that
    sum over a chunk of images is one GEMM per kernel row on the flattened matrices, ``R``'s
    rows offset by ``i*dh*W``: rows that would pair across two images meet a zero row of ``x``.
    Against im2col for the weight gradient this drops a copy of nine times the input (3x3)
    for one of the input: ResNet-20's 16-channel backward 31 -> 22 ms, batch 128, 2 threads.
    """
    _, padding, dilation, _ = geometry
    out_channels, in_channels, kh, kw = weight.shape
    h, w = x.shape[2], x.shape[3]
    reach_h = dilation[0] * (kh - 1)
    acc = x.new_zeros((kh, kw * out_channels, in_channels))
    extended: list[torch.Tensor] = []  # x of the largest chunk, reused as a workspace

    def weight_grad(chunk: slice, rows: torch.Tensor) -> None:
        if not extended:  # the first chunk is the largest; its zero rows stay zero
            extended.append(x.new_empty((rows.shape[0], h + reach_h, w, in_channels)))
            extended[0][:, h:].zero_()
        x_rows = extended[0][: rows.shape[0]]
        x_rows[:, :h] = x[chunk].permute(0, 2, 3, 1)
        flat_rows, flat_x = rows.flatten(0, 1), x_rows.flatten(0, 2)
        length = flat_x.shape[0]
        for i in range(kh):
            offset = i * dilation[0] * w
            acc[i].addmm_(flat_rows[offset:].t(), flat_x[: length - offset])

    kernel = (kh, kw)
    full = _full_padding(kernel, padding, dilation)
    flipped = _flipped_weight_rows(weight, 1)
    grad_x = _correlate(grad_out, flipped, None, kernel, (1, 1), full, dilation, weight_grad)
    # acc[i][j*O + o, c] = dW[o, c, kh-1-i, kw-1-j]
    by_position = acc.view(kh, kw, out_channels, in_channels).flip(0, 1).permute(2, 3, 0, 1)
    grad_w = torch.empty_like(weight, memory_format=torch.preserve_format)
    grad_w.copy_(by_position)
    return grad_x, grad_w


def _weight_grad_rows(
    grad_rows: torch.Tensor, x: torch.Tensor, kernel: Pair, geometry: ConvGeometry
) -> torch.Tensor:
    """dL/dW = Gᵀ·cols as (G, O/G, K), the patch matrix rebuilt a chunk of images at a time.

    One chunk is one GEMM, which accumulates in float32 internally and rounds once. Over several
    chunks of bf16/fp16 data the partial products are formed and summed in float32, so the
    result is rounded once too, as a single GEMM (or cuDNN's weight gradient) would.
    """
    stride, padding, dilation, groups = geometry
    n, c = x.shape[0], x.shape[1]
    columns = kernel[0] * kernel[1] * c // groups
    rows_per_image = grad_rows.shape[1] // max(n, 1)
    chunks = batch_chunks(n, rows_per_image * columns * x.element_size(), x.device)
    space = workspace(x, chunks, groups * rows_per_image * columns)
    if _by_column(x, kernel, geometry):
        dtype = opmath_dtype(x.dtype)
        acc = x.new_zeros((columns, grad_rows.shape[2]), dtype=dtype)  # dL/dWᵀ
        for chunk, padded in padded_chunks(x, padding, chunks):
            cols_t = im2col_by_column(padded, kernel, stride, dilation, space).to(dtype)
            rows = grad_rows[0, chunk.start * rows_per_image : chunk.stop * rows_per_image]
            acc.addmm_(cols_t, rows.to(dtype))
        return acc.t().unsqueeze(0)
    if len(chunks) == 1:  # one GEMM rounds once by itself: no float32 copies needed
        _, padded = next(padded_chunks(x, padding, chunks))
        cols = im2col(padded, kernel, stride, dilation, groups, space)
        return torch.bmm(grad_rows.transpose(1, 2), cols)
    dtype, acc = opmath_dtype(x.dtype), None
    for chunk, padded in padded_chunks(x, padding, chunks):
        cols = im2col(padded, kernel, stride, dilation, groups, space).to(dtype)
        rows = grad_rows[:, chunk.start * rows_per_image : chunk.stop * rows_per_image]
        rows_t = rows.transpose(1, 2).to(dtype)
        acc = torch.bmm(rows_t, cols) if acc is None else acc.baddbmm_(rows_t, cols)
    if acc is None:  # no images
        return x.new_zeros((groups, grad_rows.shape[2], columns), dtype=dtype)
    return acc


def _gemm(
    cols: torch.Tensor, w_cols: torch.Tensor, bias: torch.Tensor | None, groups: int
) -> torch.Tensor:
    if bias is None:
        return torch.bmm(cols, w_cols)
    return torch.baddbmm(bias.view(groups, 1, -1), cols, w_cols)


def _col2im_grad(
    grad_rows: torch.Tensor,
    w_rows: torch.Tensor,
    x_shape: Sequence[int],
    kernel: Pair,
    geometry: ConvGeometry,
) -> torch.Tensor:
    """dL/dx for strided or over-padded convolutions: col2im(G·W), a chunk of images at a time."""
    stride, padding, dilation, _ = geometry
    n = x_shape[0]
    rows_per_image = grad_rows.shape[1] // max(n, 1)
    # Overlapping patches add up to kh*kw contributions per pixel: sum them in float32.
    grad_padded = grad_rows.new_zeros(
        padded_shape(x_shape, padding), dtype=opmath_dtype(grad_rows.dtype)
    )
    groups, _, k = w_rows.shape
    chunks = batch_chunks(n, rows_per_image * k * grad_rows.element_size(), grad_rows.device)
    space = workspace(grad_rows, chunks, groups * rows_per_image * k)
    for chunk in chunks:
        rows = grad_rows[:, chunk.start * rows_per_image : chunk.stop * rows_per_image]
        grad_cols = from_workspace(grad_rows, (groups, rows.shape[1], k), space)
        torch.bmm(rows, w_rows, out=grad_cols)  # (G, m, K)
        col2im_add_(grad_padded[chunk], grad_cols, kernel, stride, dilation)
    top, _, left, _ = padding
    h, w = x_shape[2], x_shape[3]
    grad_x = grad_padded[:, top : top + h, left : left + w].permute(0, 3, 1, 2)
    return grad_x.to(grad_rows.dtype)


def _weight_rows(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """(O, C/G, kh, kw) -> (G, O/G, kh*kw*C/G): one row per filter, in im2col column order."""
    out_channels = weight.shape[0]
    return weight.permute(0, 2, 3, 1).reshape(groups, out_channels // groups, -1)


def _flipped_weight_rows(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The kernel of the input gradient: channels in<->out swapped, rotated by 180°.

    (O, C/G, kh, kw) -> (G, C/G, kh*kw*O/G), rows in the same im2col order as :func:`_weight_rows`.
    """
    out_channels, in_per_group, kh, kw = weight.shape
    per_group = weight.view(groups, out_channels // groups, in_per_group, kh, kw)
    return per_group.flip(3, 4).permute(0, 2, 3, 4, 1).reshape(groups, in_per_group, -1)


def _full_padding(kernel: Pair, padding: Padding4, dilation: Pair) -> Padding4:
    """Padding of the output gradient that makes a stride-1 correlation land back on the input.

    Negative when the forward padding exceeds the kernel's reach (then col2im is used instead).
    """
    reach_h, reach_w = (d * (k - 1) for k, d in zip(kernel, dilation, strict=True))
    top, bottom, left, right = padding
    return (reach_h - top, reach_h - bottom, reach_w - left, reach_w - right)
