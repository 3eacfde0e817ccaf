"""Inverted dropout with an explicit keep-mask, drawn exactly as PyTorch's CPU kernel draws it."""

from __future__ import annotations

import torch

from cnnlab.functional._utils import first_order_only, fresh_outputs, inplace_in_eager


class _Dropout(torch.autograd.Function):
    """Zero each element with probability ``p`` and scale survivors by ``1 / (1 - p)``.

    Backward multiplies by the same mask, so only a boolean keep-mask (1 byte per element) is
    saved.
    """

    @staticmethod
    @fresh_outputs
    def forward(ctx, input: torch.Tensor, p: float, inplace: bool):
        ctx.p = p
        ctx.save_for_backward(keep := _keep_mask(input, p))
        noise = _noise(keep, p, input.dtype)
        if inplace:
            ctx.mark_dirty(input)
            return input.mul_(noise)
        return input * noise

    @staticmethod
    @first_order_only
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return grad * _noise(keep, ctx.p, grad.dtype), None, None


def _keep_mask(input: torch.Tensor, p: float) -> torch.Tensor:
    """Same draw as ATen's CPU dropout (``bernoulli_(1 - p)`` over the input's shape, none for
    ``p == 1``), so a seeded custom model drops the same units as a seeded built-in one."""
    if p == 1:
        return torch.zeros_like(input, dtype=torch.bool)
    return torch.empty_like(input, dtype=torch.bool).bernoulli_(1 - p)


def _noise(keep: torch.Tensor, p: float, dtype: torch.dtype) -> torch.Tensor:
    """The mask scaled by ``1 / (1 - p)``, rounded like ATen's (a division, not a reciprocal)."""
    noise = keep.to(dtype)
    return noise if p == 1 else noise.div_(1 - p)


def dropout(
    input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False
) -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.dropout``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    # ATen returns the input itself in these cases; keeping that identity keeps eval graphs small.
    if not training or p == 0 or input.numel() == 0:
        return input
    return _Dropout.apply(input, p, inplace_in_eager(inplace))
