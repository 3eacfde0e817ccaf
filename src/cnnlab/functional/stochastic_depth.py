"""Stochastic depth (Huang et al. 2016): drop a residual branch per sample, as torchvision does.

The keep-mask is drawn exactly as ``torchvision.ops.stochastic_depth`` draws it (one
``bernoulli_`` over ``(N, 1, ..., 1)`` in ``row`` mode, over one element in ``batch`` mode,
scaled by ``1 / (1 - p)``), so a seeded custom model drops the same samples as the built-in one.
"""

from __future__ import annotations

import torch

from cnnlab.functional._utils import first_order_only, fresh_outputs

MODES = ("batch", "row")


class _ScaleByMask(torch.autograd.Function):
    """``x * noise`` with a constant, broadcast noise; backward ``g * noise``."""

    @staticmethod
    @fresh_outputs
    def forward(ctx, input: torch.Tensor, noise: torch.Tensor):
        ctx.save_for_backward(noise)
        return input * noise

    @staticmethod
    @first_order_only
    def backward(ctx, grad: torch.Tensor):
        (noise,) = ctx.saved_tensors
        return grad * noise, None


def stochastic_depth(
    input: torch.Tensor, p: float, mode: str, training: bool = True
) -> torch.Tensor:
    """Drop-in for ``torchvision.ops.stochastic_depth``."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if mode not in MODES:
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")
    if not training or p == 0.0:
        return input
    survival_rate = 1.0 - p
    size = [input.shape[0]] + [1] * (input.ndim - 1) if mode == "row" else [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device).bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return _ScaleByMask.apply(input, noise)
