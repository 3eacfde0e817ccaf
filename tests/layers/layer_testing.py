"""Shared helpers for layer tests: build a custom/built-in twin pair and compare them, the
no-built-in-fallback guard, and one example per op of the registry (``cnnlab.layers.ops``).

Import them in a test module of this folder with ``from layer_testing import twins, ...``
(pytest puts the folder on ``sys.path``). Not ``from conftest import``: ``tests/`` holds several
``conftest.py`` files and whichever pytest loaded last owns the name ``conftest``.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, settings
from torch.utils._python_dispatch import TorchDispatchMode

from cnnlab.layers.ops import OPS

#: Property tests compare against PyTorch on random configurations; a few dozen examples cover
#: the argument space well while keeping the suite fast. No deadline: shared CPUs are jittery.
layer_settings = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

#: Tolerance for comparing bfloat16 results computed with different summation orders.
BF16_TOL = {"rtol": 2e-2, "atol": 2e-2}


def twins(
    custom_cls: type[nn.Module],
    builtin_cls: type[nn.Module],
    *args,
    dtype: torch.dtype = torch.float32,
    **kwargs,
) -> tuple[nn.Module, nn.Module]:
    """Construct both families from the same seed: equal init is part of the drop-in contract."""
    torch.manual_seed(0)
    custom = custom_cls(*args, **kwargs).to(dtype)
    torch.manual_seed(0)
    builtin = builtin_cls(*args, **kwargs).to(dtype)
    return custom, builtin


def run_with_grads(
    module: nn.Module, x: torch.Tensor, grad_out: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    """Forward ``x`` (a leaf copy, so ``x`` itself keeps its layout and no grad) and backprop.

    Returns the output and the gradients of the input (key ``"input"``) and of every parameter.
    """
    module.zero_grad(set_to_none=True)
    leaf = x.detach().requires_grad_(x.is_floating_point())
    out = module(leaf)
    out.backward(grad_out(out))
    grads = {"input": leaf.grad, **{name: p.grad for name, p in module.named_parameters()}}
    return out, grads


def assert_twins_match(
    custom: nn.Module, builtin: nn.Module, x: torch.Tensor, **tol: float
) -> None:
    """Assert equal outputs, output dtypes and gradients (input and parameters) for ``x``.

    Both modules backprop the same random upstream gradient, so every term of the backward
    pass is exercised (an all-ones gradient would hide transposition mistakes), and draw from
    the same seed.
    """
    gen = torch.Generator().manual_seed(1)
    upstream: dict[str, torch.Tensor] = {}

    def grad_out(out: torch.Tensor) -> torch.Tensor:
        if "g" not in upstream:
            upstream["g"] = torch.randn(out.shape, generator=gen, dtype=torch.float64)
        return upstream["g"].to(out.device, out.dtype)

    torch.manual_seed(2)  # the same random draws (dropout, stochastic depth) in both runs
    out_c, grads_c = run_with_grads(custom, x, grad_out)
    torch.manual_seed(2)
    out_b, grads_b = run_with_grads(builtin, x, grad_out)
    assert out_c.dtype == out_b.dtype
    torch.testing.assert_close(out_c, out_b, **tol)
    assert grads_c.keys() == grads_b.keys()
    for name, grad_b in grads_b.items():
        grad_c = grads_c[name]
        assert (grad_c is None) == (grad_b is None), name
        if grad_b is not None:
            assert grad_c.dtype == grad_b.dtype, name
            torch.testing.assert_close(
                grad_c,
                grad_b,
                **(_scaled(tol, grad_b) if tol else _grad_tol(grad_b)),
                msg=lambda m, n=name: f"{n}: {m}",
            )


def _scaled(tol: dict[str, float], grad: torch.Tensor) -> dict[str, float]:
    """A given (low-precision) tolerance with ``atol`` scaled to the gradient's largest entry.

    A weight gradient is a sum over the batch: in bf16 its rounding is relative to its largest
    terms, not to each entry, so an entry that cancels to ~0 carries the error of the big ones
    (0.046 on a 0.002 entry of a 32-scale conv weight gradient, torch 2.11's built-in vs ours;
    both 0.11 from the float64 result)."""
    if "atol" not in tol or grad.numel() == 0:
        return tol
    return {**tol, "atol": tol["atol"] * max(1.0, grad.abs().max().item())}


def _grad_tol(grad: torch.Tensor) -> dict[str, float]:
    """float32 tolerance for a gradient: weight and bias gradients are sums over every batch and
    output position, summed in another order than ATen's, so their rounding grows with the sum
    (1.2e-5 seen on a 1.09 entry of a dilated 4x4 kernel over 3x10x11 positions); the
    ``assert_close`` defaults, made for single products, are too tight for them. float64 keeps
    the defaults."""
    if grad.dtype != torch.float32 or grad.numel() == 0:
        return {}
    return {"rtol": 1e-5, "atol": 1e-5 * max(1.0, grad.abs().max().item())}


# -- the no-built-in-fallback guard -------------------------------------------------------------
#: What the guard forbids: the built-in implementations of every op of the registry.
FORBIDDEN_FUNCTIONAL = sorted({name for op in OPS for name in op.builtin_functional})
FORBIDDEN_ATEN = sorted({pattern for op in OPS for pattern in op.builtin_aten})


class ForbidBuiltinKernels(TorchDispatchMode):
    """Raise on any ATen op whose name matches ``FORBIDDEN_ATEN``; run every other op."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in FORBIDDEN_ATEN):
            raise AssertionError(f"the custom path ran PyTorch's built-in kernel aten.{name}")
        return func(*args, **(kwargs or {}))


@contextmanager
def forbid_builtin_functional() -> Iterator[None]:
    """Make the forbidden ``torch.nn.functional`` and all ``torch.nn.grad`` entry points raise."""

    def forbidden(name: str) -> Callable[..., None]:
        def raise_(*args, **kwargs) -> None:
            raise AssertionError(f"the custom path called the built-in {name}")

        return raise_

    patches = [(F, name, f"torch.nn.functional.{name}") for name in FORBIDDEN_FUNCTIONAL]
    patches += [
        (torch.nn.grad, name, f"torch.nn.grad.{name}")
        for name, fn in inspect.getmembers(torch.nn.grad, inspect.isfunction)
        if fn.__module__ == "torch.nn.grad"
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, label in patches:
            setattr(owner, name, forbidden(label))
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


@contextmanager
def forbid_builtins() -> Iterator[None]:
    """Both nets of the guard: patched public entry points and the ATen dispatch mode."""
    with forbid_builtin_functional(), ForbidBuiltinKernels():
        yield


# -- one small example per op of the registry ---------------------------------------------------
@dataclass(frozen=True)
class Example:
    """Constructor arguments and an input for one op; ``target`` makes the layer a loss."""

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    shape: tuple[int, ...] = (2, 3, 6, 6)
    target: Callable[[], torch.Tensor] | None = None
    train: bool = True

    def build(self, cls: type[nn.Module], dtype: torch.dtype = torch.float32) -> nn.Module:
        torch.manual_seed(0)
        module = cls(*self.args, **self.kwargs).to(dtype).train(self.train)
        if self.target is None:
            return module
        target = self.target()  # in the input's dtype: torch 2.11's mse_loss backward refuses mixed
        return WithTarget(module, target.to(dtype) if target.is_floating_point() else target)

    def input(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        gen = torch.Generator().manual_seed(0)
        # * 4 reaches every piece of the piecewise activations (Hardswish's -3 and 3 too)
        return torch.randn(self.shape, generator=gen, dtype=dtype) * 4 + 0.5


class WithTarget(nn.Module):
    """A loss with its target fixed, so it can be run like a layer: ``loss(x, target)``."""

    def __init__(self, loss: nn.Module, target: torch.Tensor) -> None:
        super().__init__()
        self.loss = loss
        self.register_buffer("target", target, persistent=False)  # moves with .to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.loss(x, self.target)


def _classes() -> torch.Tensor:
    return torch.tensor([0, 2, 4, 1, 2, 3])


#: Keyed by ``Op.name``; tests/layers/test_registry.py fails for an op without an example.
EXAMPLES: dict[str, Example] = {
    "Conv2d": Example((3, 4, 3), {"padding": 1, "stride": 2}),
    "Linear": Example((5, 3), shape=(4, 5)),
    "MaxPool2d": Example((3,), {"stride": 2, "padding": 1}, shape=(2, 3, 7, 7)),
    "AvgPool2d": Example((3,), {"stride": 2, "padding": 1}, shape=(2, 3, 7, 7)),
    "AdaptiveAvgPool2d": Example(((3, 2),), shape=(2, 3, 7, 5)),  # overlapping windows
    "ReLU": Example(),
    "Hardtanh": Example((-0.5, 1.5)),
    "ReLU6": Example(shape=(2, 3, 6, 6)),
    "Hardsigmoid": Example(),
    "Hardswish": Example(),
    "Sigmoid": Example(),
    "SiLU": Example(),
    "GELU": Example(kwargs={"approximate": "tanh"}),
    "LayerNorm": Example(((6,),), shape=(2, 3, 6)),
    "LayerNorm2d": Example((3,), shape=(2, 3, 4, 5)),
    "StochasticDepth": Example((0.5, "row"), shape=(8, 3, 2, 2)),
    "Dropout": Example((0.5,), train=False),
    "BatchNorm2d": Example((3,), shape=(4, 3, 5, 5)),
    "SyncBatchNorm": Example((3,), shape=(4, 3, 5, 5)),
    "Flatten": Example(),
    "CrossEntropyLoss": Example(kwargs={"label_smoothing": 0.1}, shape=(6, 5), target=_classes),
    "NLLLoss": Example(kwargs={"ignore_index": 1}, shape=(6, 5), target=_classes),
    "MSELoss": Example(shape=(6, 5), target=lambda: torch.rand(6, 5)),
}
