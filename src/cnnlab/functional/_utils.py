"""Argument normalisation and mixed-precision plumbing shared by the hand-written ops."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pair(value: int | Sequence[int], name: str = "argument") -> tuple[int, int]:
    """Expand an int to ``(v, v)`` the way ``torch.nn`` does for 2-D layers."""
    if isinstance(value, int):
        return (value, value)
    out = tuple(int(v) for v in value)
    if len(out) == 1:
        return (out[0], out[0])
    if len(out) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return out  # type: ignore[return-value]


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The low-precision dtype autocast would use on ``device_type`` right now, or ``None``."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def cast_like_builtin_lowp(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Cast floating tensors to the autocast dtype, as autocast does for conv/linear (``lower_precision_fp`` ops).

    Autocast only intercepts PyTorch's own kernels; a custom Function must apply the same cast
    itself so that a custom model runs in the same precision as a built-in one.
    """
    ref = next(t for t in tensors if t is not None)
    dtype = autocast_dtype(ref.device.type)
    if dtype is None:
        return tensors
    return tuple(
        t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors
    )


def cast_like_builtin_fp32(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Cast floating tensors to float32 under autocast, as autocast does for losses (``fp32`` ops)."""
    ref = next(t for t in tensors if t is not None)
    if autocast_dtype(ref.device.type) is None:
        return tensors
    return tuple(
        t.float() if t is not None and t.is_floating_point() else t for t in tensors
    )
