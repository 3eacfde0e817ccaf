"""2-D convolution as im2col + one GEMM, with its backward pass written out.

Forward, for every group g (one group in an ordinary convolution)::

    cols = im2col(pad(x))                 # (N*Ho*Wo, kh*kw*C)   one row per receptive field
    y    = cols @ Wᵀ + b                  # (N*Ho*Wo, O)         = the output, channels-last

Backward, given G = dL/dy reshaped the same way::

    dL/dW = Gᵀ @ cols                      # every weight met every patch it was applied to
    dL/dx = col2im(G @ W)                  # "deconvolution": patch gradients summed back to pixels
    dL/db = Σ_rows G

The output is returned as an (N, O, Ho, Wo) tensor that is channels-last in memory: a permuted
view of the GEMM result, so no copy. A network of these layers therefore stays channels-last
throughout, whatever layout its input had.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cnnlab.functional._im2col import (
    Padding4,
    batch_chunks,
    col2im_add_,
    im2col,
    output_size,
    pad_channels_last,
)
from cnnlab.functional._utils import (
    cast_like_builtin_lowp,
    check_same_device,
    check_same_dtype,
    first_order_only,
    opmath_dtype,
    pair,
)

IntOrPair = int | Sequence[int]
Pair = tuple[int, int]


class Conv2dFunction(torch.autograd.Function):
    """y = conv2d(x, W, b) on a 4-D input with explicit (top, bottom, left, right) zero padding.

    The backward is plain code over tensors saved without autograd history, so differentiating
    it again would silently drop terms; ``once_differentiable`` turns that into an error.
    """

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: Pair,
        padding: Padding4,
        dilation: Pair,
        groups: int,
    ) -> torch.Tensor:
        w_rows = _weight_rows(weight, groups)
        padded, out = _correlate(x, w_rows, bias, weight.shape[2:], stride, padding, dilation)
        # Keep the padded input rather than the 9x larger patch matrix: rebuilding cols in
        # backward costs one copy and keeps peak memory close to PyTorch's own convolution.
        ctx.save_for_backward(padded, weight, w_rows)
        ctx.geometry = (x.shape, stride, padding, dilation, groups)
        return out

    @staticmethod
    @first_order_only
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        padded, weight, w_rows = ctx.saved_tensors
        x_shape, stride, padding, dilation, groups = ctx.geometry
        out_channels, in_per_group, kh, kw = weight.shape
        n, o, ho, wo = grad_out.shape
        # (N, O, Ho, Wo) -> (G, N*Ho*Wo, O/G): a view when grad_out is channels-last, as it is
        # when the next layer is one of ours.
        grad_rows = grad_out.permute(0, 2, 3, 1).reshape(n * ho * wo, groups, o // groups)
        grad_rows = grad_rows.transpose(0, 1)
        grad_x = grad_w = grad_b = None

        if ctx.needs_input_grad[0]:
            full = _full_padding((kh, kw), padding, dilation)
            if stride == (1, 1) and min(full) >= 0:
                # dL/dx is the "full" correlation of G with the 180°-rotated, transposed kernel:
                # the forward routine again, which beats summing patches back (col2im).
                flipped = _flipped_weight_rows(weight, groups)
                _, grad_x = _correlate(grad_out, flipped, None, (kh, kw), stride, full, dilation)
            else:
                grad_x = _col2im_grad(
                    grad_rows, w_rows, padded.shape, x_shape, (kh, kw), stride, padding, dilation
                )
        if ctx.needs_input_grad[1]:
            grad_w_rows = _weight_grad_rows(grad_rows, padded, w_rows, (kh, kw), stride, dilation)
            # Laid out exactly like the weight (strides included, even of size-1 dims): DDP's
            # gradient buckets and fused optimizers expect grad.stride() == param.stride().
            grad_w = torch.empty_like(weight, memory_format=torch.preserve_format)
            grad_w.copy_(grad_w_rows.view(out_channels, kh, kw, in_per_group).permute(0, 3, 1, 2))
        if ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None, None


def _correlate(
    x: torch.Tensor,
    w_rows: torch.Tensor,
    bias: torch.Tensor | None,
    kernel: Sequence[int],
    stride: Pair,
    padding: Padding4,
    dilation: Pair,
) -> tuple[torch.Tensor, torch.Tensor]:
    """im2col + GEMM (batched over groups); returns (padded input, NCHW channels-last output).

    The patch matrix is built a chunk of images at a time (see ``batch_chunks``); each chunk's
    GEMM writes straight into its rows of the output. The output is allocated as the
    channels-last NCHW tensor itself (not a permuted view of an NHWC one): a Function that
    returns a view cannot be followed by an in-place op such as ``ReLU(inplace=True)``.
    """
    groups, out_per_group, k = w_rows.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    padded = pad_channels_last(x, padding)
    n, hp, wp, _ = padded.shape
    ho, wo = output_size(hp, kh, sh, dh), output_size(wp, kw, sw, dw)
    w_cols = w_rows.transpose(1, 2)
    if torch.compiler.is_compiling():
        # One GEMM, no out=: its (N*Ho*Wo, O) result viewed as NCHW is already channels-last.
        rows = _gemm(im2col(padded, (kh, kw), stride, dilation, groups), w_cols, bias, groups)
        out = rows.transpose(0, 1).reshape(n, ho, wo, groups * out_per_group)
        return padded, out.permute(0, 3, 1, 2)
    out = torch.empty(
        (n, groups * out_per_group, ho, wo),
        dtype=padded.dtype,
        device=padded.device,
        memory_format=torch.channels_last,
    )
    # (N*Ho*Wo, G*O/G) seen as (G, N*Ho*Wo, O/G): contiguous rows for one group.
    out_rows = out.permute(0, 2, 3, 1).view(n * ho * wo, groups, out_per_group).transpose(0, 1)
    for chunk in batch_chunks(n, ho * wo * k * padded.element_size(), padded.device):
        cols = im2col(padded[chunk], (kh, kw), stride, dilation, groups)  # (G, m, K)
        target = out_rows[:, chunk.start * ho * wo : chunk.stop * ho * wo]
        if groups > 1:  # bmm cannot write into interleaved group columns
            target.copy_(_gemm(cols, w_cols, bias, groups))
        elif bias is None:
            torch.bmm(cols, w_cols, out=target)
        else:
            torch.baddbmm(bias.view(1, 1, -1), cols, w_cols, out=target)
    return padded, out


def _weight_grad_rows(
    grad_rows: torch.Tensor,
    padded: torch.Tensor,
    w_rows: torch.Tensor,
    kernel: Pair,
    stride: Pair,
    dilation: Pair,
) -> torch.Tensor:
    """dL/dW = Gᵀ·cols as (G, O/G, K), the patch matrix rebuilt a chunk of images at a time.

    One chunk is one GEMM, which accumulates in float32 internally and rounds once. Over several
    chunks of bf16/fp16 data the partial products are formed and summed in float32, so the
    result is rounded once too, as a single GEMM (or cuDNN's weight gradient) would.
    """
    n, groups = padded.shape[0], w_rows.shape[0]
    rows_per_image = grad_rows.shape[1] // max(n, 1)
    chunks = batch_chunks(
        n, rows_per_image * w_rows.shape[2] * padded.element_size(), padded.device
    )
    if len(chunks) == 1:
        return torch.bmm(
            grad_rows.transpose(1, 2), im2col(padded, kernel, stride, dilation, groups)
        )
    dtype, acc = opmath_dtype(w_rows.dtype), None
    for chunk in chunks:
        cols = im2col(padded[chunk], kernel, stride, dilation, groups).to(dtype)
        rows = grad_rows[:, chunk.start * rows_per_image : chunk.stop * rows_per_image]
        rows_t = rows.transpose(1, 2).to(dtype)
        acc = torch.bmm(rows_t, cols) if acc is None else acc.baddbmm_(rows_t, cols)
    return acc if acc is not None else w_rows.new_zeros(w_rows.shape, dtype=dtype)  # no images


def _gemm(
    cols: torch.Tensor, w_cols: torch.Tensor, bias: torch.Tensor | None, groups: int
) -> torch.Tensor:
    if bias is None:
        return torch.bmm(cols, w_cols)
    return torch.baddbmm(bias.view(groups, 1, -1), cols, w_cols)


def _col2im_grad(
    grad_rows: torch.Tensor,
    w_rows: torch.Tensor,
    padded_shape: torch.Size,
    x_shape: torch.Size,
    kernel: Pair,
    stride: Pair,
    padding: Padding4,
    dilation: Pair,
) -> torch.Tensor:
    """dL/dx for strided or over-padded convolutions: col2im(G·W), a chunk of images at a time."""
    n = padded_shape[0]
    rows_per_image = grad_rows.shape[1] // max(n, 1)
    # Overlapping patches add up to kh*kw contributions per pixel: sum them in float32.
    grad_padded = grad_rows.new_zeros(padded_shape, dtype=opmath_dtype(grad_rows.dtype))
    bytes_per_image = rows_per_image * w_rows.shape[2] * grad_rows.element_size()
    for chunk in batch_chunks(n, bytes_per_image, grad_rows.device):
        rows = grad_rows[:, chunk.start * rows_per_image : chunk.stop * rows_per_image]
        grad_cols = torch.bmm(rows, w_rows)  # (G, m, K)
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


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: IntOrPair = 1,
    padding: str | IntOrPair = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
) -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.conv2d`` (batched or unbatched input).

    Errors name the op; a layer prefixes its own repr (``errors_named_after``), e.g.
    ``Conv2d(3, 16, kernel_size=(3, 3), stride=(1, 1)): conv2d expected input with 3 channels``.
    """
    name = "conv2d"
    _check_tensors(input, weight, bias, groups, name)
    check_same_device(name, input, weight=weight, bias=bias)
    stride = _positive_pair(stride, "stride", name)
    dilation = _positive_pair(dilation, "dilation", name)
    kernel = (weight.shape[2], weight.shape[3])
    pads = _padding4(padding, kernel, stride, dilation, name)
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    _check_fits(x, kernel, dilation, pads, name)

    x, weight, bias = cast_like_builtin_lowp(x, weight, bias)
    check_same_dtype(name, x, weight=weight, bias=bias)
    out = Conv2dFunction.apply(x, weight, bias, stride, pads, dilation, groups)
    return out.squeeze(0) if unbatched else out


def _check_tensors(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int, name: str
) -> None:
    """Reject inputs PyTorch would reject, with a message that says what to change."""
    if x.dim() not in (3, 4):
        raise ValueError(
            f"{name} expected a 3-D (C, H, W) or 4-D (N, C, H, W) input, got shape {tuple(x.shape)}"
        )
    if weight.dim() != 4:
        raise ValueError(
            f"{name} expected a 4-D weight (O, C/groups, kh, kw), got {tuple(weight.shape)}"
        )
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{name} expected groups to be a positive int, got {groups!r}")
    out_channels, in_per_group = weight.shape[:2]
    if out_channels % groups:
        raise ValueError(
            f"{name}: groups={groups} must divide the {out_channels} output channels of the weight"
        )
    expected, got = in_per_group * groups, x.shape[-3]
    if got != expected:
        raise ValueError(f"{name} expected input with {expected} channels, got {got}")
    if min(weight.shape) < 1:
        raise ValueError(f"{name} expected a non-empty weight, got shape {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (out_channels,):
        raise ValueError(
            f"{name} expected bias of shape ({out_channels},), got {tuple(bias.shape)}"
        )


def _positive_pair(value: IntOrPair, what: str, name: str) -> Pair:
    pair_ = pair(value, f"{name} {what}")
    if min(pair_) < 1:
        raise ValueError(f"{name} expected a positive {what}, got {value!r}")
    return pair_


def _padding4(
    padding: str | IntOrPair, kernel: Pair, stride: Pair, dilation: Pair, name: str
) -> Padding4:
    """Resolve ``padding`` to (top, bottom, left, right).

    'same' pads a total of dilation*(k-1) per axis with the odd pixel at the bottom/right, as
    PyTorch does, so even kernels match it exactly.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise ValueError(f"{name}: padding must be 'valid', 'same' or int(s), got {padding!r}")
        if stride != (1, 1):
            raise ValueError(
                f"{name}: padding='same' needs stride 1 (got stride={stride}); pass explicit "
                f"padding ints to combine padding with a stride"
            )
        pads: list[int] = []
        for k, d in zip(kernel, dilation, strict=True):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)  # type: ignore[return-value]
    ph, pw = pair(padding, f"{name} padding")
    if min(ph, pw) < 0:
        raise ValueError(f"{name} expected non-negative padding, got {padding!r}")
    return (ph, ph, pw, pw)


def _check_fits(x: torch.Tensor, kernel: Pair, dilation: Pair, pads: Padding4, name: str) -> None:
    h, w = x.shape[2] + pads[0] + pads[1], x.shape[3] + pads[2] + pads[3]
    span = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True))
    if h < span[0] or w < span[1]:
        raise ValueError(
            f"{name}: the kernel (spanning {span[0]}x{span[1]} with dilation) is larger than the "
            f"padded input ({h}x{w}); use a larger input, more padding or a smaller kernel"
        )
