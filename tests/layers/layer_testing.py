"""Shared helpers for layer tests: build a custom/built-in twin pair and compare them.

Import them in a test module of this folder with ``from layer_testing import twins, ...``
(pytest puts the folder on ``sys.path``). Not ``from conftest import``: ``tests/`` holds several
``conftest.py`` files and whichever pytest loaded last owns the name ``conftest``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from hypothesis import HealthCheck, settings

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
    pass is exercised (an all-ones gradient would hide transposition mistakes).
    """
    gen = torch.Generator().manual_seed(1)
    upstream: dict[str, torch.Tensor] = {}

    def grad_out(out: torch.Tensor) -> torch.Tensor:
        if "g" not in upstream:
            upstream["g"] = torch.randn(out.shape, generator=gen, dtype=torch.float64)
        return upstream["g"].to(out.dtype)

    out_c, grads_c = run_with_grads(custom, x, grad_out)
    out_b, grads_b = run_with_grads(builtin, x, grad_out)
    assert out_c.dtype == out_b.dtype
    torch.testing.assert_close(out_c, out_b, **tol)
    assert grads_c.keys() == grads_b.keys()
    for name, grad_b in grads_b.items():
        grad_c = grads_c[name]
        assert (grad_c is None) == (grad_b is None), name
        if grad_b is not None:
            assert grad_c.dtype == grad_b.dtype, name
            torch.testing.assert_close(grad_c, grad_b, **tol, msg=lambda m, n=name: f"{n}: {m}")
