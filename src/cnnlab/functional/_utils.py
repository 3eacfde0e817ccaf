"""Argument normalisation and mixed-precision plumbing shared by the hand-written ops."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

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
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors)


def cast_like_builtin_fp32(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Cast floating tensors to float32 under autocast, as autocast does for losses (``fp32`` ops)."""
    ref = next(t for t in tensors if t is not None)
    if autocast_dtype(ref.device.type) is None:
        return tensors
    return tuple(t.float() if t is not None and t.is_floating_point() else t for t in tensors)


@functools.cache
def autocast_aware(
    function: type[torch.autograd.Function], device_type: str, dtype: torch.dtype | None
) -> type[torch.autograd.Function]:
    """Return ``function`` wrapped by ``torch.amp.custom_fwd/custom_bwd`` for one device type.

    The AMP decorators need a fixed ``device_type`` and cast dtype, while one op must serve CPU
    and CUDA under whichever autocast dtype is active; so each combination gets its own cached
    subclass. Its forward runs with autocast disabled on floating inputs cast to ``dtype`` (the
    caller has already cast them with :func:`cast_like_builtin_lowp`, so that cast is a no-op),
    and its backward replays the forward's autocast state, i.e. stays in the inputs' dtypes.
    Call it as ``autocast_aware(MyFn, x.device.type, autocast_dtype(x.device.type)).apply(...)``.
    """
    forward = torch.amp.custom_fwd(function.forward, device_type=device_type, cast_inputs=dtype)
    backward = torch.amp.custom_bwd(function.backward, device_type=device_type)
    return type(
        function.__name__,
        (function,),
        {"forward": staticmethod(forward), "backward": staticmethod(backward)},
    )


def check_same_device(name: str, input: torch.Tensor, **params: torch.Tensor | None) -> None:
    """Fail early, naming the culprit, when a parameter lives on another device than the input."""
    for what, param in params.items():
        if param is not None and param.device != input.device:
            raise ValueError(
                f"{name}: input is on {input.device} but {what} is on {param.device}; "
                f"move both to one device (e.g. `model.to(input.device)`)"
            )


def check_same_dtype(name: str, input: torch.Tensor, **params: torch.Tensor | None) -> None:
    """Fail early, naming the culprit, when a parameter's dtype differs from the input's.

    Call it after the autocast cast, so that a float32 layer fed bfloat16 under autocast passes,
    as it does with the built-in layers.
    """
    for what, param in params.items():
        if param is not None and param.dtype != input.dtype:
            raise TypeError(
                f"{name}: input is {input.dtype} but {what} is {param.dtype}; cast one of them "
                f"(e.g. `model.to({input.dtype})`) or run under torch.autocast"
            )


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype PyTorch's kernels accumulate in: float32 for bf16/fp16, else ``dtype`` itself.

    Reductions (batch statistics, log-sum-exp, window sums) lose too much in 8- or 11-bit
    mantissas, so the built-ins widen them internally; the hand-written ops do the same.
    """
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


@contextmanager
def errors_named_after(layer: torch.nn.Module) -> Iterator[None]:
    """Prefix argument errors raised inside a layer's forward with the layer's repr.

    The functional ops only know their own name; in a deep model the user needs to know *which*
    layer received the bad input, and its repr shows the configuration to fix.
    """
    try:
        yield
    except (ValueError, TypeError, IndexError) as err:
        raise type(err)(f"{layer}: {err}") from None
