"""Two copies of one network -- hand-written and built-in layers -- with identical weights."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import nn

from cnnlab.layers import convert

IMPL_ORDER = ("custom", "builtin")


def make_twins(model: nn.Module, loss: nn.Module) -> dict[str, tuple[nn.Module, nn.Module]]:
    """``{"custom": (model, loss), "builtin": (model, loss)}``, deep copies of the arguments.

    Both sides come from the one network via ``copy.deepcopy`` + ``convert``, so weights, buffers
    and layer settings are equal by construction rather than by re-seeding.
    """
    return {
        impl: (convert(copy.deepcopy(model), to=impl), convert(copy.deepcopy(loss), to=impl))
        for impl in IMPL_ORDER
    }


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules without children: the layers whose forward/backward kernels differ between impls."""
    return [(name, m) for name, m in model.named_modules() if name and not any(m.children())]


def freeze_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """Put dropout layers in eval mode: their random masks can't match across implementations."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.eval()
            yield module


def cast(model: nn.Module, loss: nn.Module, device: torch.device, dtype: torch.dtype):
    """Move a twin to the compared device/dtype (in place, returns it for chaining)."""
    return model.to(device=device, dtype=dtype), loss.to(device=device, dtype=dtype)
