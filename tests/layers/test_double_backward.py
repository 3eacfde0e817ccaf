"""Second derivatives are never silently wrong: every hand-written backward is plain code over
saved tensors, so asking for a graph of it (``create_graph=True``: Hessians, double backward,
gradient penalties) is a clear error naming the op, never zeros or missing terms."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import cnnlab.functional as CF

_TARGET = torch.tensor([1, 0, 2, 1])

#: one call per functional op, on a float64 input of its usual shape
CASES: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], tuple[int, ...]]] = {
    "conv2d": (
        lambda x: CF.conv2d(x, torch.randn(2, 3, 3, 3, dtype=x.dtype), padding=1),
        (2, 3, 5, 5),
    ),
    "linear": (lambda x: CF.linear(x, torch.randn(4, 6, dtype=x.dtype)), (3, 6)),
    "max_pool2d": (lambda x: CF.max_pool2d(x, 2), (2, 3, 4, 4)),
    "avg_pool2d": (lambda x: CF.avg_pool2d(x, 2), (2, 3, 4, 4)),
    "relu": (CF.relu, (3, 5)),
    "log_softmax": (lambda x: CF.log_softmax(x, dim=1), (4, 3)),
    "dropout": (lambda x: CF.dropout(x, 0.5, training=True), (4, 5)),
    "batch_norm": (lambda x: CF.batch_norm(x, None, None, training=True), (4, 3, 2, 2)),
    "cross_entropy": (lambda x: CF.cross_entropy(x, _TARGET), (4, 3)),
    "nll_loss": (lambda x: CF.nll_loss(x, _TARGET), (4, 3)),
    "mse_loss": (lambda x: CF.mse_loss(x, torch.zeros_like(x)), (4, 3)),
    "adaptive_avg_pool2d": (lambda x: CF.adaptive_avg_pool2d(x, (2, 3)), (2, 3, 5, 5)),
    "hardtanh": (lambda x: CF.hardtanh(x, -0.5, 0.5), (3, 5)),
    "relu6": (lambda x: CF.relu6(x * 4), (3, 5)),
    "hardsigmoid": (CF.hardsigmoid, (3, 5)),
    "hardswish": (CF.hardswish, (3, 5)),
    "sigmoid": (CF.sigmoid, (3, 5)),
    "silu": (CF.silu, (3, 5)),
    "gelu": (CF.gelu, (3, 5)),
    "layer_norm": (lambda x: CF.layer_norm(x, (5,)), (3, 5)),
    "stochastic_depth": (lambda x: CF.stochastic_depth(x, 0.25, "row"), (8, 5)),
}


def test_every_functional_op_has_a_case() -> None:
    assert set(CASES) == set(CF.__all__)


@pytest.mark.parametrize("name", sorted(CASES))
def test_create_graph_is_refused_with_the_op_named(name: str) -> None:
    op, shape = CASES[name]
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    (first,) = torch.autograd.grad(op(x).pow(2).sum(), x)  # first order: fine
    assert torch.isfinite(first).all()
    with pytest.raises(RuntimeError, match="first-order only") as error:
        torch.autograd.grad(op(x).pow(2).sum(), x, create_graph=True)
    assert "convert" in str(error.value)


def test_cross_entropy_hessian_is_refused_not_wrong() -> None:
    """The case that used to return a wrong Hessian without a word."""
    logits = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="first-order only"):
        torch.autograd.functional.hessian(lambda z: CF.cross_entropy(z, _TARGET), logits)
