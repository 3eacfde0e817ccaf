"""An in-place op right after a hand-written layer behaves as it does after the built-in one.

Real models write into layer outputs (``ReLU(inplace=True)`` after a conv, ``x += identity``
after a batch norm, in-place dropout after a linear). Autograd refuses that when a custom
Function returns a view, and silently corrupts the backward pass when a Function saves its
output without autograd seeing the write. So for every layer of ``cnnlab.layers`` and every
kind of in-place op, the custom and built-in layer must either give the same forward and
gradients (float64) or both refuse with the same error type.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn as nn
from torchvision.models.convnext import LayerNorm2d
from torchvision.ops import StochasticDepth

import cnnlab.layers as custom
from cnnlab.layers import convert

TOL = {"rtol": 1e-12, "atol": 1e-12}


def _add_one(x: torch.Tensor) -> torch.Tensor:
    return x.add_(1)


#: The in-place ops that follow the layer: torch's two in-place activations in torchvision's
#: models, a bare in-place method (as in residual ``out += identity``), and cnnlab's own ReLU.
INPLACE_OPS: dict[str, Callable[[], Callable[[torch.Tensor], torch.Tensor]]] = {
    "nn.ReLU(inplace)": lambda: nn.ReLU(inplace=True),
    "nn.SiLU(inplace)": lambda: nn.SiLU(inplace=True),
    "add_(1)": lambda: _add_one,
    "cnnlab.ReLU(inplace)": lambda: custom.ReLU(inplace=True),
}

#: (built-in layer factory, input shape, train mode). Each is converted to its custom twin.
#: Settings are picked where an op's output layout or saved state differs: channels_last and
#: unbatched inputs, groups, 1x1, ceil_mode, return_indices, batch vs running statistics.
LAYERS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], bool]] = {
    "conv": (lambda: nn.Conv2d(3, 4, 3, padding=1), (2, 3, 6, 6), True),
    "conv_1x1_nobias": (lambda: nn.Conv2d(3, 4, 1, bias=False), (2, 3, 5, 5), True),
    "conv_depthwise_stride2": (lambda: nn.Conv2d(4, 4, 3, 2, 1, groups=4), (2, 4, 7, 7), True),
    "conv_unbatched": (lambda: nn.Conv2d(3, 2, 2), (3, 5, 5), True),
    "conv_reflect": (
        lambda: nn.Conv2d(3, 2, 3, padding=1, padding_mode="reflect"),
        (1, 3, 4, 4),
        True,
    ),
    "linear": (lambda: nn.Linear(5, 3), (4, 5), True),
    "linear_3d": (lambda: nn.Linear(5, 3), (2, 4, 5), True),
    "linear_1d_nobias": (lambda: nn.Linear(5, 3, bias=False), (5,), True),
    "maxpool": (lambda: nn.MaxPool2d(2), (2, 3, 6, 6), True),
    "maxpool_ceil_pad": (lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True), (2, 3, 6, 6), True),
    "maxpool_unbatched": (lambda: nn.MaxPool2d(2), (3, 4, 4), True),
    "avgpool": (lambda: nn.AvgPool2d(2), (2, 3, 6, 6), True),
    "avgpool_pad": (lambda: nn.AvgPool2d(3, 1, 1, count_include_pad=False), (2, 3, 5, 5), True),
    "batchnorm_train": (lambda: nn.BatchNorm2d(3), (2, 3, 4, 4), True),
    "batchnorm_eval": (lambda: nn.BatchNorm2d(3), (2, 3, 4, 4), False),
    "batchnorm_no_running": (
        lambda: nn.BatchNorm2d(3, affine=False, track_running_stats=False),
        (2, 3, 4, 4),
        True,
    ),
    "relu": (lambda: nn.ReLU(), (2, 3, 4, 4), True),
    "relu_inplace": (lambda: nn.ReLU(inplace=True), (2, 3, 4, 4), True),
    "dropout_train": (lambda: nn.Dropout(0.4), (4, 6), True),
    "dropout_train_inplace": (lambda: nn.Dropout(0.4, inplace=True), (4, 6), True),
    "dropout_eval": (lambda: nn.Dropout(0.4), (4, 6), False),
    "flatten": (lambda: nn.Flatten(), (2, 3, 2, 2), True),
    "adaptive_avgpool_global": (lambda: nn.AdaptiveAvgPool2d(1), (2, 3, 4, 4), True),
    "adaptive_avgpool_overlap": (lambda: nn.AdaptiveAvgPool2d((3, 2)), (2, 3, 5, 5), True),
    "hardtanh": (lambda: nn.Hardtanh(-0.5, 0.5), (2, 3, 4, 4), True),
    "relu6_inplace": (lambda: nn.ReLU6(inplace=True), (2, 3, 4, 4), True),
    "hardsigmoid_inplace": (lambda: nn.Hardsigmoid(inplace=True), (2, 3, 4, 4), True),
    "hardswish": (lambda: nn.Hardswish(), (2, 3, 4, 4), True),
    "hardswish_inplace": (lambda: nn.Hardswish(inplace=True), (2, 3, 4, 4), True),
    "sigmoid": (lambda: nn.Sigmoid(), (2, 3, 4, 4), True),
    "silu": (lambda: nn.SiLU(), (2, 3, 4, 4), True),
    "silu_inplace": (lambda: nn.SiLU(inplace=True), (2, 3, 4, 4), True),
    "gelu": (lambda: nn.GELU(), (2, 3, 4, 4), True),
    "layernorm": (lambda: nn.LayerNorm(4), (2, 3, 4, 4), True),
    "layernorm2d": (lambda: LayerNorm2d(3), (2, 3, 4, 4), True),
    "stochastic_depth": (lambda: StochasticDepth(0.5, "row"), (4, 3, 2, 2), True),
}

#: Losses take a target; their scalar output may be scaled in place (``loss.mul_(w)``).
LOSSES: dict[str, tuple[Callable[[], nn.Module], Callable[[], torch.Tensor]]] = {
    "cross_entropy": (
        lambda: nn.CrossEntropyLoss(label_smoothing=0.1),
        lambda: torch.tensor([0, 2, 1, 2]),
    ),
    "nll": (lambda: nn.NLLLoss(), lambda: torch.tensor([0, 2, 1, 2])),
    "mse_none": (lambda: nn.MSELoss(reduction="none"), lambda: torch.rand(4, 3)),
}


def _run(
    layer: nn.Module,
    op: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    through_op: bool,
    *extra: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]] | type[BaseException]:
    """Forward ``layer`` then ``op`` and backprop a fixed random gradient.

    ``through_op`` feeds the layer a computed tensor rather than the leaf itself, as inside a
    network. Returns the output and gradients, or the exception type if autograd refuses.
    """
    layer.zero_grad(set_to_none=True)
    leaf = x.detach().clone().requires_grad_()
    try:
        torch.manual_seed(0)  # the same dropout mask for both families
        out = layer(leaf * 1.0 if through_op else leaf, *extra)
        if isinstance(out, tuple):
            out = out[0]
        out = op(out)
        upstream = torch.randn(
            out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype
        )
        out.backward(upstream)
    except RuntimeError as error:
        return _error_kind(error)
    grads = {"input": leaf.grad, **{name: p.grad for name, p in layer.named_parameters()}}
    return out.detach(), grads


class _InplaceOnView(Exception):
    """Stands for autograd's refusal to modify a view in place."""


class _SavedTensorModified(Exception):
    """Stands for autograd's 'variable needed for gradient computation has been modified'."""


class _LeafInplace(Exception):
    """Stands for 'a leaf Variable that requires grad is being used in an in-place operation'."""


def _error_kind(error: RuntimeError) -> type[BaseException]:
    """Reduce autograd's message to its kind: the wording differs between the two families only
    in names (``ReluBackward0`` vs ``_ReLUBackward``), which is not what this test is about."""
    message = str(error)
    if "is a view" in message:
        return _InplaceOnView
    if "modified by an inplace operation" in message:
        return _SavedTensorModified
    if "leaf Variable" in message:
        return _LeafInplace
    raise error


def _assert_same(got, want) -> None:
    if isinstance(want, type) or isinstance(got, type):
        assert got is want, f"custom: {got}, built-in: {want}"
        return
    torch.testing.assert_close(got[0], want[0], **TOL)
    assert got[1].keys() == want[1].keys()
    for name, grad in want[1].items():
        if grad is None:
            assert got[1][name] is None, name
        else:
            torch.testing.assert_close(got[1][name], grad, **TOL, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("through_op", [True, False], ids=["computed-input", "leaf-input"])
@pytest.mark.parametrize("op_name", list(INPLACE_OPS))
@pytest.mark.parametrize("layer_name", list(LAYERS))
def test_inplace_op_after_layer_matches_builtin(
    layer_name: str, op_name: str, through_op: bool
) -> None:
    factory, shape, train = LAYERS[layer_name]
    builtin, twin = (_seeded(factory, train) for _ in range(2))
    twin = convert(twin, to="custom")
    assert type(twin) is not type(builtin)
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    want = _run(builtin, INPLACE_OPS[op_name](), x, through_op)
    got = _run(twin, INPLACE_OPS[op_name](), x, through_op)
    _assert_same(got, want)
    # Running statistics (batch norm) are updated alike, whatever the op did afterwards.
    for key, value in builtin.state_dict().items():
        torch.testing.assert_close(twin.state_dict()[key], value, **TOL, msg=key)


def _seeded(factory: Callable[[], nn.Module], train: bool) -> nn.Module:
    torch.manual_seed(0)
    return factory().double().train(train)


@pytest.mark.parametrize("op_name", list(INPLACE_OPS))
@pytest.mark.parametrize("loss_name", list(LOSSES))
def test_inplace_op_after_loss_matches_builtin(loss_name: str, op_name: str) -> None:
    factory, target = LOSSES[loss_name]
    x = torch.randn(4, 3, dtype=torch.float64).log_softmax(1)
    if loss_name == "mse_none":
        x = x.exp()
    y = target().to(torch.float64) if loss_name == "mse_none" else target()
    want = _run(factory().double(), INPLACE_OPS[op_name](), x, True, y)
    got = _run(convert(factory().double(), to="custom"), INPLACE_OPS[op_name](), x, True, y)
    _assert_same(got, want)
