"""Spatial-size arithmetic, so every model sizes its classifier from ``in_shape`` alone.

Computing the flatten size from the formulas (rather than a dummy forward pass) keeps model
construction free of compute and makes the size rules readable next to the layers they describe.
"""

from __future__ import annotations

Size = tuple[int, int]


def conv_out(size: Size, kernel: int, stride: int = 1, padding: int | Size = 0) -> Size:
    """Output (H, W) of a conv or pool with a square kernel and no dilation (floor mode)."""
    pad_h, pad_w = padding if isinstance(padding, tuple) else (padding, padding)
    return (size[0] + 2 * pad_h - kernel) // stride + 1, (
        size[1] + 2 * pad_w - kernel
    ) // stride + 1


def check_in_shape(in_shape: tuple[int, int, int] | None, model: str) -> tuple[int, Size]:
    """Split ``(C, H, W)`` into channels and spatial size, with an error that says how to fix it."""
    if in_shape is None or len(in_shape) != 3 or min(in_shape) < 1:
        raise ValueError(
            f"{model} needs in_shape=(C, H, W) with positive sizes, got {in_shape!r}. The training "
            "builders fill it from the data module; when building by hand pass e.g. "
            "in_shape=(3, 32, 32)."
        )
    channels, height, width = (int(v) for v in in_shape)
    return channels, (height, width)
