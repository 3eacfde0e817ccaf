"""The hand-written path never reaches PyTorch's own conv/pool/linear/BN/dropout/loss kernels.

Two independent nets catch a fallback: the public ``torch.nn.functional`` / ``torch.nn.grad``
entry points are patched to raise (catches a call however it is spelled in Python), and a
``TorchDispatchMode`` raises on the forbidden ATen ops themselves (catches kernels reached any
other way, including inside backward). Every model, every custom layer with each of its options
and every custom loss run forward *and* backward under both. What is forbidden comes from the op
registry (``cnnlab.layers.ops``), and the tests at the end check that the guard really catches
the built-in twin of every registered op and has a case for each.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn as nn
from layer_testing import EXAMPLES, ForbidBuiltinKernels, forbid_builtin_functional, forbid_builtins

import cnnlab.layers as L
from cnnlab.layers.ops import OPS
from cnnlab.models import MODELS


@pytest.fixture
def no_builtins() -> Callable[[Callable[[], torch.Tensor]], None]:
    """Return ``run(step)``: calls ``step`` (a forward returning a tensor) and backward, guarded."""

    def run(step: Callable[[], torch.Tensor]) -> None:
        with forbid_builtins():
            out = step()
            out.float().square().sum().backward()

    return run


def test_the_guard_catches_builtin_forward_and_backward(no_builtins) -> None:
    x = torch.randn(1, 1, 5, 5, requires_grad=True)
    with pytest.raises(AssertionError, match=r"torch\.nn\.functional\.conv2d"):
        no_builtins(lambda: nn.Conv2d(1, 1, 3)(x))
    with pytest.raises(AssertionError, match=r"aten\.convolution"):
        no_builtins(lambda: torch.conv2d(x, torch.randn(1, 1, 3, 3)))  # skips the F patch

    out = torch.max_pool2d(x, 2)  # forward unguarded: the guard must still see the backward kernel
    with ForbidBuiltinKernels(), pytest.raises(AssertionError, match="max_pool2d"):
        out.sum().backward()


MODEL_CASES = {
    **{name: (name, {}) for name in MODELS},
    "seed_cnn-bn-dropout": ("seed_cnn", {"batch_norm": True, "dropout": 0.5}),
    "lenet5-avgpool": ("lenet5", {"pool": "avg"}),
    "resnet-shortcut-A": ("resnet", {"shortcut": "A"}),
}


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_models_run_without_builtin_kernels(no_builtins, case: str, train: bool) -> None:
    name, options = MODEL_CASES[case]
    model = MODELS[name](impl="custom", in_shape=(3, 16, 16), num_classes=10, **options)
    model.train(train)
    x, target = torch.randn(4, 3, 16, 16), torch.tensor([0, 3, 9, 3])
    no_builtins(lambda: L.CrossEntropyLoss()(model(x), target))
    assert all(p.grad is not None for p in model.parameters())


def test_model_under_cpu_bf16_autocast_runs_without_builtin_kernels(no_builtins) -> None:
    model = MODELS["seed_cnn"](impl="custom", in_shape=(3, 16, 16), num_classes=10)
    x, target = torch.randn(4, 3, 16, 16), torch.tensor([0, 3, 9, 3])

    def step() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return L.CrossEntropyLoss()(model(x), target)

    no_builtins(step)


LAYER_CASES = {
    "conv-default": (lambda: L.Conv2d(3, 4, 3), (2, 3, 7, 5)),
    "conv-stride-pad-tuple": (
        lambda: L.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 2)),
        (2, 3, 7, 5),
    ),
    "conv-stride-gt-kernel": (lambda: L.Conv2d(3, 4, 2, stride=3), (2, 3, 8, 8)),
    "conv-dilation": (lambda: L.Conv2d(3, 4, 3, dilation=2, padding=1), (2, 3, 9, 9)),
    "conv-groups": (lambda: L.Conv2d(4, 6, 3, groups=2), (2, 4, 6, 6)),
    "conv-depthwise": (lambda: L.Conv2d(4, 4, 3, groups=4, padding=1), (2, 4, 6, 6)),
    "conv-no-bias": (lambda: L.Conv2d(3, 4, 3, bias=False), (2, 3, 6, 6)),
    "conv-same-even": (lambda: L.Conv2d(3, 4, 4, padding="same", dilation=2), (2, 3, 7, 5)),
    "conv-valid": (lambda: L.Conv2d(3, 4, 3, padding="valid"), (2, 3, 6, 6)),
    "conv-unbatched": (lambda: L.Conv2d(3, 4, 3, padding=1), (3, 6, 6)),
    **{
        f"conv-{mode}": (
            lambda mode=mode: L.Conv2d(3, 4, 3, padding=1, padding_mode=mode),
            (2, 3, 6, 6),
        )
        for mode in ("reflect", "replicate", "circular")
    },
    "linear": (lambda: L.Linear(5, 3), (4, 5)),
    "linear-no-bias-3d": (lambda: L.Linear(5, 3, bias=False), (2, 4, 5)),
    "maxpool-default": (lambda: L.MaxPool2d(2), (2, 3, 8, 8)),
    "maxpool-all-options": (
        lambda: L.MaxPool2d((3, 2), stride=(2, 1), padding=1, dilation=(1, 2), ceil_mode=True),
        (2, 3, 7, 6),
    ),
    "maxpool-indices": (lambda: _First(L.MaxPool2d(3, 2, return_indices=True)), (2, 3, 7, 5)),
    "maxpool-unbatched": (lambda: L.MaxPool2d(2), (3, 6, 6)),
    "avgpool-default": (lambda: L.AvgPool2d(2), (2, 3, 8, 8)),
    "avgpool-all-options": (
        lambda: L.AvgPool2d((3, 2), stride=2, padding=1, ceil_mode=True, count_include_pad=False),
        (2, 3, 7, 6),
    ),
    "avgpool-divisor": (lambda: L.AvgPool2d(3, 2, padding=1, divisor_override=5), (2, 3, 7, 5)),
    "avgpool-unbatched": (lambda: L.AvgPool2d(2), (3, 6, 6)),
    "relu": (lambda: L.ReLU(), (2, 3, 4, 4)),
    "relu-inplace": (lambda: nn.Sequential(_Double(), L.ReLU(inplace=True)), (2, 3, 4, 4)),
    "dropout-train": (lambda: L.Dropout(0.3), (2, 3, 4, 4)),
    "dropout-eval": (lambda: L.Dropout(0.3).eval(), (2, 3, 4, 4)),
    "dropout-p0": (lambda: L.Dropout(0.0), (2, 3, 4, 4)),
    "dropout-p1": (lambda: L.Dropout(1.0), (2, 3, 4, 4)),
    "batchnorm-train": (lambda: L.BatchNorm2d(3), (4, 3, 5, 5)),
    "batchnorm-eval": (lambda: L.BatchNorm2d(3).eval(), (4, 3, 5, 5)),
    "batchnorm-cma": (lambda: L.BatchNorm2d(3, momentum=None), (4, 3, 5, 5)),
    "batchnorm-no-affine": (lambda: L.BatchNorm2d(3, affine=False, eps=1e-3), (4, 3, 5, 5)),
    "batchnorm-no-stats": (
        lambda: L.BatchNorm2d(3, track_running_stats=False).eval(),
        (4, 3, 5, 5),
    ),
    # One process: the single-process fallback. The all-reduced path runs under the same guard
    # on two processes in test_sync_batchnorm.py.
    "syncbatchnorm-train": (lambda: L.SyncBatchNorm(3, momentum=None), (4, 3, 5)),
    "syncbatchnorm-eval": (lambda: L.SyncBatchNorm(3).eval(), (4, 3, 5, 5)),
    "flatten": (lambda: L.Flatten(), (2, 3, 4, 4)),
    "adaptive-avgpool-global": (lambda: L.AdaptiveAvgPool2d(1), (2, 3, 5, 4)),
    "adaptive-avgpool-overlap": (lambda: L.AdaptiveAvgPool2d((3, None)), (2, 3, 7, 5)),
    "adaptive-avgpool-unbatched": (lambda: L.AdaptiveAvgPool2d(2), (3, 5, 5)),
    "hardtanh": (lambda: L.Hardtanh(-0.5, 0.5), (2, 3, 4, 4)),
    "relu6-inplace": (lambda: nn.Sequential(_Double(), L.ReLU6(inplace=True)), (2, 3, 4, 4)),
    "hardsigmoid": (lambda: L.Hardsigmoid(), (2, 3, 4, 4)),
    "hardswish-inplace": (lambda: nn.Sequential(_Double(), L.Hardswish(True)), (2, 3, 4, 4)),
    "sigmoid": (lambda: L.Sigmoid(), (2, 3, 4, 4)),
    "silu": (lambda: L.SiLU(), (2, 3, 4, 4)),
    "silu-inplace": (lambda: nn.Sequential(_Double(), L.SiLU(inplace=True)), (2, 3, 4, 4)),
    "gelu": (lambda: L.GELU(), (2, 3, 4, 4)),
    "gelu-tanh": (lambda: L.GELU(approximate="tanh"), (2, 3, 4, 4)),
    "layernorm": (lambda: L.LayerNorm((4, 4)), (2, 3, 4, 4)),
    "layernorm-no-affine": (lambda: L.LayerNorm(4, elementwise_affine=False), (2, 3, 4)),
    "layernorm2d": (lambda: L.LayerNorm2d(3), (2, 3, 4, 4)),
    "stochastic-depth-row": (lambda: L.StochasticDepth(0.5, "row"), (4, 3, 2, 2)),
}


class _First(nn.Module):
    """Keep the output of a layer that returns ``(output, indices)``."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)[0]


class _Double(nn.Module):
    """Make the input a non-leaf so an in-place layer may overwrite it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layers_run_without_builtin_kernels(no_builtins, case: str) -> None:
    build, shape = LAYER_CASES[case]
    layer = build()
    x = torch.randn(shape, requires_grad=True)
    no_builtins(lambda: layer(x))
    assert x.grad is not None


def _class_targets() -> torch.Tensor:
    return torch.tensor([0, 2, 4, 1, 2, 3])


LOSS_CASES = {
    **{
        f"ce-{reduction}": (lambda r=reduction: L.CrossEntropyLoss(reduction=r), _class_targets)
        for reduction in ("mean", "sum", "none")
    },
    "ce-weight-ignore-smoothing": (
        lambda: L.CrossEntropyLoss(weight=torch.rand(5) + 0.1, ignore_index=2, label_smoothing=0.2),
        _class_targets,
    ),
    "ce-probabilities": (
        lambda: L.CrossEntropyLoss(label_smoothing=0.1),
        lambda: torch.softmax(torch.randn(6, 5), dim=1),
    ),
    **{
        f"nll-{reduction}": (lambda r=reduction: L.NLLLoss(reduction=r), _class_targets)
        for reduction in ("mean", "sum", "none")
    },
    "nll-weight-ignore": (
        lambda: L.NLLLoss(weight=torch.rand(5) + 0.1, ignore_index=1),
        _class_targets,
    ),
    **{
        f"mse-{reduction}": (lambda r=reduction: L.MSELoss(reduction=r), lambda: torch.randn(6, 5))
        for reduction in ("mean", "sum", "none")
    },
}


@pytest.mark.parametrize("case", sorted(LOSS_CASES))
def test_losses_run_without_builtin_kernels(no_builtins, case: str) -> None:
    build, make_target = LOSS_CASES[case]
    loss, target = build(), make_target()
    x = torch.randn(6, 5, requires_grad=True)
    no_builtins(lambda: loss(x, target))
    assert x.grad is not None


# -- the guard covers the registry ----------------------------------------------------------
#: Ops whose built-in twin runs kernels of its own (not Flatten's view or StochasticDepth's
#: plain tensor arithmetic).
KERNEL_OPS = [op for op in OPS if op.builtin_functional or op.builtin_aten]
#: Built-ins that reach no op of their own in ATen on CPU (``aten.linear`` and ``aten.dropout``
#: are composite: they decompose into addmm / bernoulli before a dispatch mode sees them), so
#: only the patched ``torch.nn.functional`` entry point can catch them.
COMPOSITE_ON_CPU = {"Linear", "Dropout"}
#: Built-ins whose module calls a ``torch.*`` function, not ``torch.nn.functional``
#: (``nn.Sigmoid`` runs ``torch.sigmoid``), so only the ATen net can catch them.
NOT_VIA_FUNCTIONAL = {"Sigmoid"}


def _run_builtin_twin(op) -> None:
    example = EXAMPLES[op.name]
    module, x = example.build(op.builtin), example.input().requires_grad_()
    module(x).float().square().sum().backward()


@pytest.mark.parametrize("op", KERNEL_OPS, ids=lambda op: op.name)
def test_the_guard_catches_the_builtin_twin_of_every_registered_op(op) -> None:
    """A registered op whose built-in kernels are missing from the guard fails here."""
    assert op.builtin_functional, f"{op.name}: list its torch.nn.functional entry points"
    if op.name not in NOT_VIA_FUNCTIONAL:
        with (
            forbid_builtin_functional(),
            pytest.raises(AssertionError, match=r"torch\.nn\.functional"),
        ):
            _run_builtin_twin(op)
    if op.name in COMPOSITE_ON_CPU:
        return
    with ForbidBuiltinKernels(), pytest.raises(AssertionError, match="built-in kernel aten"):
        _run_builtin_twin(op)


def test_every_registered_op_has_a_guard_case() -> None:
    layers = {type(m) for build, _ in LAYER_CASES.values() for m in build().modules()}
    losses = {type(build()) for build, _ in LOSS_CASES.values()}
    missing = {op.name for op in KERNEL_OPS} - {cls.__name__ for cls in layers | losses}
    assert not missing, f"add cases for {sorted(missing)} to LAYER_CASES or LOSS_CASES"
