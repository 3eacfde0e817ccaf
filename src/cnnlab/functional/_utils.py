"""Argument normalisation and mixed-precision plumbing shared by the hand-written ops."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch.autograd.function import once_differentiable
from torch.torch_version import TorchVersion


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


def host_checks_allowed(t: torch.Tensor) -> bool:
    """Whether a check may read ``t``'s values on the host: only in eager mode on the CPU.

    On a GPU, reading a value (``.item()``, ``if t.any():``) waits for every queued kernel: a
    host-device synchronisation that stalls the step and cannot be captured in a CUDA graph.
    Under ``torch.compile`` it is a graph break. There the checks run on the device instead
    (:func:`assert_on_device`); on the CPU in eager mode a host check is free and can name
    the offending value.
    """
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def assert_on_device(condition: torch.Tensor, message: str) -> None:
    """Fail with ``message`` when the 0-d bool tensor ``condition`` is False, without a sync.

    ``torch._assert_async`` is checked by the device when it runs the step, so the error
    surfaces at the next synchronisation (on CUDA as a device-side assert) instead of at once.
    """
    torch._assert_async(condition, message)


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

    The one way every hand-written layer names itself in errors. The functional ops only know
    their own name; in a deep model the user needs to know *which* layer received the bad
    input, and its repr shows the configuration to fix.
    """
    try:
        yield
    except (ValueError, TypeError, IndexError) as err:
        raise type(err)(f"{layer}: {err}") from None


def has_forward_alias_bug(version: str) -> bool:
    """Whether torch ``version``'s dynamo returns zero input gradients for an
    ``autograd.Function`` whose forward returns a tensor written in place (``exp_().add_(1)``)
    or a no-op ``.to(dtype)`` of one: it adds the pre-mutation alias as a second output and
    autograd routes the gradient there (pytorch/pytorch#180642, in 2.11, fixed in 2.12).
    Silent: compiled training just stops learning."""
    return (2, 11) <= TorchVersion(version) < (2, 12)


FORWARD_ALIAS_BUG = has_forward_alias_bug(torch.__version__)


def fresh_outputs(forward: Callable) -> Callable:
    """Mark a Function's forward to return fresh tensors when compiled on torch 2.11.

    There (see :data:`FORWARD_ALIAS_BUG`) each output tensor is cloned under ``torch.compile``,
    so no output shares its storage with an intermediate of the trace; in eager mode and on
    every other torch release the forward is unchanged. Every Function of
    :mod:`cnnlab.functional` carries it (``tests/layers/test_registry.py`` checks).
    """
    if not FORWARD_ALIAS_BUG:
        forward.fresh_outputs = True
        return forward

    @functools.wraps(forward)
    def wrapper(ctx, *args):
        out = forward(ctx, *args)
        if not torch.compiler.is_compiling():
            return out
        if isinstance(out, tuple):
            return tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in out)
        return out.clone()

    wrapper.fresh_outputs = True
    return wrapper


def first_order_only(backward: Callable) -> Callable:
    """Mark a hand-written backward as first-order: asking for a graph of it is an error.

    The backward passes are plain code over tensors saved without history, so a second
    derivative through them would miss terms. ``once_differentiable`` alone is not enough:
    when the incoming gradient needs no grad (a loss's ``1``) it returns tensors without
    history, and ``torch.autograd.functional.hessian`` then reports zeros without a word. So
    a backward run with ``create_graph=True`` (grad mode on) refuses at once, naming the op.
    Compiled graphs are exempt: AOTAutograd traces backward its own way and its compiled
    backward already refuses double backward.
    """
    inner = once_differentiable(backward)

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            op = backward.__qualname__.split(".")[0].strip("_")
            raise RuntimeError(
                f"{op}: the hand-written backward is first-order only, so create_graph=True "
                "(second derivatives, Hessians, gradient penalties) is not supported; convert "
                "the model to built-in layers for that (cnnlab.layers.convert(model, "
                "to='builtin') or model.impl=builtin)"
            )
        return inner(ctx, *grads)

    return wrapper


def inplace_in_eager(inplace: bool) -> bool:
    """``inplace``, except under ``torch.compile``, where in-place ops run out of place.

    Dynamo refuses a Function that marks its input dirty and returns the result of an in-place
    chain, and refuses writing into a view another Function returned (a compiled conv's output),
    so the compiled path computes out of place; the compiler plans buffer reuse itself. Code
    that uses the op's result (every torch.nn / torchvision model) gets the same numbers; only
    code that reads the *input* after an in-place op would see it unmodified.
    """
    return inplace and not torch.compiler.is_compiling()
