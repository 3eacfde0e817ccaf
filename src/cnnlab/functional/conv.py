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

from cnnlab.functional import _kernels as kernels
from cnnlab.functional._conv_math import ConvGeometry
from cnnlab.functional._im2col import Padding4
from cnnlab.functional._utils import (
    cast_like_builtin_lowp,
    check_same_device,
    check_same_dtype,
    first_order_only,
    fresh_outputs,
    pair,
)

IntOrPair = int | Sequence[int]
Pair = tuple[int, int]


class Conv2dFunction(torch.autograd.Function):
    """y = conv2d(x, W, b) on a 4-D input with explicit (top, bottom, left, right) zero padding.

    The backward is plain code over tensors saved without autograd history, so differentiating
    it again would silently drop terms; ``first_order_only`` turns that into an error. The
    arithmetic lives in :mod:`cnnlab.functional._conv_math`; :mod:`cnnlab.functional._kernels`
    hands it to ``torch.compile`` as custom operators.
    """

    @staticmethod
    @fresh_outputs
    def forward(
        ctx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        geometry: ConvGeometry,
    ) -> torch.Tensor:
        out = kernels.conv_forward(x, weight, bias, geometry)
        # Keep the input rather than the 9x larger patch matrix: rebuilding cols in backward
        # costs one copy and keeps peak memory close to PyTorch's own convolution.
        ctx.save_for_backward(x, weight)
        ctx.geometry = geometry
        return out

    @staticmethod
    @first_order_only
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0] and ctx.needs_input_grad[1]:
            grad_x, grad_w = kernels.conv_backward(grad_out, x, weight, ctx.geometry)
        elif ctx.needs_input_grad[0]:
            grad_x = kernels.conv_input_grad(grad_out, x, weight, ctx.geometry)
        elif ctx.needs_input_grad[1]:
            grad_w = kernels.conv_weight_grad(grad_out, x, weight, ctx.geometry)
        if ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None


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
    geometry = ConvGeometry(stride, pads, dilation, groups)
    out = Conv2dFunction.apply(x, weight, bias, geometry)
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
