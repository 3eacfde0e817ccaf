"""The CUDA path, checked without a GPU: no host syncs, and the built-ins' dtypes and layouts.

Two stand-ins for a GPU:

- ``FakeTensorMode`` tensors on device ``cuda`` run every model's forward through the real
  CUDA-side code paths (the device decides ``host_checks_allowed``), with autocast's CUDA flags
  set directly (``torch.autocast("cuda")`` disables itself when no GPU is present). That checks
  dtypes, devices and memory formats against the built-in layers, not numerics.
- CPU tensors with ``host_checks_allowed`` forced off run forward *and* backward through the
  same sync-free branches with real numbers.

In both, a dispatch mode records every ``aten._local_scalar_dense`` (what ``.item()``,
``bool(t)`` and ``if t.any():`` dispatch to) with the line of cnnlab that asked for it.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import cnnlab.layers as L
from cnnlab.models import MODELS

MODEL_KWARGS = {
    "seed_cnn": {"in_shape": (3, 32, 32), "dropout": 0.3, "batch_norm": True},
    "lenet5": {"in_shape": (1, 28, 28)},
    "vgg": {"in_shape": (3, 32, 32)},
    "resnet": {"in_shape": (3, 32, 32), "depth": 20},
}


class HostSyncs(TorchDispatchMode):
    """Collects the cnnlab source lines of every op that reads a tensor value on the host."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            frames = [f for f in traceback.extract_stack() if "/cnnlab/" in f.filename]
            where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "outside cnnlab"
            self.lines.append(where)
        return func(*args, **(kwargs or {}))


@contextmanager
def as_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Take the branches the ops take on a GPU: no value checks on the host."""
    for name, module in list(sys.modules.items()):
        if name.startswith("cnnlab.functional") and hasattr(module, "host_checks_allowed"):
            monkeypatch.setattr(module, "host_checks_allowed", lambda t: False)
    yield


@contextmanager
def cuda_autocast(dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
        return
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    try:
        yield
    finally:
        torch.set_autocast_enabled("cuda", False)


def _layer_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.dtype, bool]]:
    """(name, dtype, channels_last?) of every leaf layer's output, in call order."""
    seen: list[tuple[str, torch.dtype, bool]] = []
    hooks = [
        m.register_forward_hook(
            lambda m, i, out, name=name: seen.append(
                (
                    name,
                    out.dtype,
                    out.dim() == 4 and out.is_contiguous(memory_format=torch.channels_last),
                )
            )
        )
        for name, m in model.named_modules()
        if not list(m.children())
    ]
    model(x)
    for hook in hooks:
        hook.remove()
    return seen


@pytest.mark.parametrize(
    "autocast", [None, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"]
)
@pytest.mark.parametrize("name", list(MODEL_KWARGS))
def test_fake_cuda_forward_has_no_host_sync_and_the_builtin_dtypes(name, autocast) -> None:
    kwargs = MODEL_KWARGS[name]
    with FakeTensorMode(), torch.device("cuda"):
        torch.manual_seed(0)
        custom = MODELS[name](impl="custom", **kwargs)
        builtin = MODELS[name](impl="builtin", **kwargs)
        x = torch.randn(4, *kwargs["in_shape"])
        y = torch.randint(0, 10, (4,))
        with cuda_autocast(autocast):
            expected = _layer_outputs(builtin, x)
            with HostSyncs() as syncs:
                got = _layer_outputs(custom, x)
                loss = L.CrossEntropyLoss()(custom(x), y)
    assert syncs.lines == [], f"host syncs at {syncs.lines}"
    assert [(n, d) for n, d, _ in got] == [(n, d) for n, d, _ in expected]
    assert loss.dtype == torch.float32 and loss.device.type == "cuda"
    # Convolutions hand the next layer channels-last activations (cuDNN may or may not).
    assert all(cl for n, _, cl in got if n.endswith(("conv1", "conv2", "conv3")))


@pytest.mark.parametrize("name", list(MODEL_KWARGS))
def test_training_step_on_the_gpu_branches_has_no_host_sync(name, monkeypatch) -> None:
    kwargs = MODEL_KWARGS[name]
    torch.manual_seed(0)
    model = MODELS[name](impl="custom", **kwargs)
    x, y = torch.randn(4, *kwargs["in_shape"]), torch.randint(0, 10, (4,))
    with as_on_a_gpu(monkeypatch), HostSyncs() as syncs:
        L.CrossEntropyLoss()(model(x), y).backward()
    assert syncs.lines == [], f"host syncs at {syncs.lines}"
    assert all(p.grad is not None for p in model.parameters())


def test_batchnorm_cumulative_average_has_no_host_sync(monkeypatch) -> None:
    """``momentum=None`` weights the n-th batch by 1/n: computed on the device, not read back."""
    custom, builtin = L.BatchNorm2d(3, momentum=None), nn.BatchNorm2d(3, momentum=None)
    for step in range(3):
        x = torch.randn(4, 3, 5, 5) + step
        with HostSyncs() as syncs:
            custom(x)
        builtin(x)
        assert syncs.lines == []
    torch.testing.assert_close(custom.running_mean, builtin.running_mean)
    torch.testing.assert_close(custom.running_var, builtin.running_var)


def test_out_of_range_target_is_a_device_side_assertion_off_the_host(monkeypatch) -> None:
    logits, target = torch.randn(3, 4), torch.tensor([0, 7, 1])
    with pytest.raises(IndexError, match="target 7 is out of bounds for 4 classes"):
        L.CrossEntropyLoss()(logits, target)  # CPU eager: the host check names the value
    with as_on_a_gpu(monkeypatch), pytest.raises(RuntimeError, match="out of bounds"):
        L.CrossEntropyLoss()(logits, target)


def test_nan_windows_pick_the_builtin_element_on_the_sync_free_branch(monkeypatch) -> None:
    x = torch.randn(2, 3, 6, 6)
    x[0, 0, 0, 1] = x[1, 2, 3, 3] = float("nan")
    x[0, 1, :2, :2] = 5.0  # a tie
    x.requires_grad_(True)
    expected, expected_idx = nn.MaxPool2d(2, return_indices=True)(x)
    (expected_grad,) = torch.autograd.grad(expected.nan_to_num().sum(), x)
    with as_on_a_gpu(monkeypatch):
        got, got_idx = L.MaxPool2d(2, return_indices=True)(x)
        (got_grad,) = torch.autograd.grad(got.nan_to_num().sum(), x)
    torch.testing.assert_close(got, expected, equal_nan=True)
    assert torch.equal(got_idx, expected_idx)
    torch.testing.assert_close(got_grad, expected_grad)


@pytest.mark.parametrize("impl", ["custom", "builtin"])
def test_lightning_training_step_has_no_host_sync(impl, monkeypatch) -> None:
    """The module's step (model, loss, metric updates) reads nothing back; Lightning's logging
    reads the logged values once per ``log_every_n_steps``, outside the step."""
    from cnnlab.training.losses import CrossEntropy
    from cnnlab.training.module import ClassificationModule

    model = MODELS["seed_cnn"](impl=impl, in_shape=(3, 32, 32))
    module = ClassificationModule(model, CrossEntropy(impl), 10, {"_target_": "torch.optim.Adam"})
    monkeypatch.setattr(module, "log", lambda *args, **kwargs: None)  # no trainer attached
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    with as_on_a_gpu(monkeypatch), HostSyncs() as syncs:
        module.training_step((x, y), 0).backward()
    assert syncs.lines == [], f"host syncs at {syncs.lines}"
