"""Where and in what arithmetic a comparison runs, and how the report names the machine."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import torch

from cnnlab.machine import cpu_model

DTYPES = {"float32": torch.float32, "float64": torch.float64}
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}.")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but PyTorch sees no CUDA GPU here; use device=cpu or auto.")
    return torch.device(name)


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}.")
    return DTYPES[name]


def autocast_factory(
    device: torch.device, dtype: torch.dtype, precision: str | None
) -> Callable[[], contextlib.AbstractContextManager]:
    """A zero-argument factory of the autocast context both impls run under (fresh per use)."""
    if precision is None:
        return contextlib.nullcontext
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be null, bf16 or fp16, got {precision!r}.")
    if dtype != torch.float32:
        raise ValueError(
            f"precision={precision} autocasts float32 work; it has no effect on {dtype}. "
            "Use dtype=float32 with autocast, or precision=null with float64."
        )
    return functools.partial(torch.autocast, device_type=device.type, dtype=PRECISIONS[precision])


def hardware(device: torch.device) -> str:
    """GPU name on CUDA, otherwise the CPU model as the OS reports it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()
