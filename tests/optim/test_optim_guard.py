"""The hand-written optimizers never hand the update to torch.optim: with every update function
of torch.optim (single-tensor, multi-tensor, fused, the functional entry points) and torch's
fused kernels made to raise, every custom optimizer still steps, while torch's own fail."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from cnnlab.optim import OPTIMIZERS

MODULES = ("torch.optim.sgd", "torch.optim.adam", "torch.optim.adamw", "torch.optim.rmsprop")
PREFIXES = ("_single_tensor_", "_multi_tensor_", "_fused_")
FUNCTIONAL = ("sgd", "adam", "adamw", "rmsprop")
FUSED_KERNELS = ("_fused_adam_", "_fused_adamw_", "_fused_sgd_")


class UpdateFunctionCalled(AssertionError):
    pass


def _raiser(name: str):
    def call(*args, **kwargs):
        raise UpdateFunctionCalled(f"{name} was called")

    return call


@pytest.fixture
def update_functions_raise(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    patched = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in dir(module):
            if name.startswith(PREFIXES) or name in FUNCTIONAL:
                monkeypatch.setattr(module, name, _raiser(f"{module_name}.{name}"))
                patched.append(f"{module_name}.{name}")
    functional = importlib.import_module("torch.optim._functional")
    for name in FUNCTIONAL:
        if hasattr(functional, name):
            monkeypatch.setattr(functional, name, _raiser(f"torch.optim._functional.{name}"))
    for name in FUSED_KERNELS:
        monkeypatch.setattr(torch, name, _raiser(f"torch.{name}"))
        patched.append(f"torch.{name}")
    return patched


class NoFusedKernels(TorchDispatchMode):
    """Fails if any fused optimizer kernel reaches the dispatcher, however it was called."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "_fused_" in func.name():
            raise UpdateFunctionCalled(f"{func.name()} ran")
        return func(*args, **(kwargs or {}))


@pytest.fixture
def no_fused_kernels() -> Iterator[None]:
    with NoFusedKernels():
        yield


def _step_twice(optimizer_class, **options) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    optimizer = optimizer_class(model.parameters(), **options)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(5, 4)).square().mean().backward()
        optimizer.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    return model


def test_the_guard_covers_every_update_function(update_functions_raise: list[str]) -> None:
    for module_name in MODULES:
        stem = module_name.rsplit(".", 1)[1]
        if stem != "adamw":  # AdamW is Adam with decoupled decay in torch 2.x
            assert f"{module_name}._single_tensor_{stem}" in update_functions_raise
            assert f"{module_name}._multi_tensor_{stem}" in update_functions_raise
    assert "torch._fused_adam_" in update_functions_raise


@pytest.mark.parametrize("twin", OPTIMIZERS, ids=lambda t: t.name)
def test_custom_steps_without_torch_update_functions(
    twin, update_functions_raise, no_fused_kernels
) -> None:
    options = {"amsgrad": True} if twin.name.startswith("adam") else {}
    if twin.name == "rmsprop":
        options = {"momentum": 0.9, "centered": True}
    _step_twice(twin.custom, weight_decay=1e-3, **options)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("twin", OPTIMIZERS, ids=lambda t: t.name)
def test_torch_optimizers_trip_the_guard(twin, foreach: bool, update_functions_raise) -> None:
    """The guard can fail: torch.optim's own classes go through the patched functions."""
    with pytest.raises(UpdateFunctionCalled):
        _step_twice(twin.builtin, foreach=foreach, **twin.builtin_options)


def test_dispatch_guard_catches_a_fused_kernel(no_fused_kernels) -> None:
    params = [torch.zeros(3)]
    grads = [torch.ones(3)]
    with pytest.raises(UpdateFunctionCalled, match="_fused_sgd_"):
        torch.ops.aten._fused_sgd_(
            params, grads, [], weight_decay=0.0, momentum=0.0, lr=0.1, dampening=0.0,
            nesterov=False, maximize=False, is_first_step=True,
        )  # fmt: skip
