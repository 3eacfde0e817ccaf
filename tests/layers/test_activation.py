"""Hand-written ReLU, log-softmax and Flatten against ``torch.nn``."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st
from layer_testing import BF16_TOL, assert_twins_match, layer_settings, twins

import cnnlab.functional as CF
import cnnlab.layers as L

shapes = st.lists(st.integers(0, 5), min_size=1, max_size=4)


def test_relu_gradcheck() -> None:
    x = torch.randn(3, 4, 5, dtype=torch.float64).add_(0.05).requires_grad_()
    assert torch.autograd.gradcheck(CF.relu, (x,))


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_log_softmax_gradcheck(dim: int) -> None:
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: CF.log_softmax(t, dim), (x,))


@layer_settings
@given(shape=shapes, dtype=st.sampled_from([torch.float64, torch.float32]), inplace=st.booleans())
def test_relu_matches_torch(shape: list[int], dtype: torch.dtype, inplace: bool) -> None:
    custom, builtin = twins(L.ReLU, nn.ReLU, inplace=inplace)
    x = torch.randint(-2, 3, shape).to(dtype)  # exact zeros: the gradient there must be 0 too
    wrap = (lambda m: nn.Sequential(_Double(), m)) if inplace else (lambda m: m)
    assert_twins_match(wrap(custom), wrap(builtin), x)


@layer_settings
@given(shape=shapes, dtype=st.sampled_from([torch.float64, torch.float32]), data=st.data())
def test_log_softmax_matches_torch(shape: list[int], dtype: torch.dtype, data) -> None:
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = (torch.randn(shape, dtype=dtype) * 10).requires_grad_()
    grad = torch.randn(shape, dtype=dtype)
    ours, theirs = CF.log_softmax(x, dim), torch.log_softmax(x, dim)
    torch.testing.assert_close(ours, theirs)
    (g_ours,) = torch.autograd.grad(ours, x, grad)
    (g_theirs,) = torch.autograd.grad(theirs, x, grad)
    torch.testing.assert_close(g_ours, g_theirs)


def test_relu_gradient_at_zero_and_nan() -> None:
    """The subgradient at 0 is 0, as in PyTorch; a NaN activation (sign 0) stops its gradient."""
    x = torch.tensor([float("nan"), -1.0, 0.0, -0.0, 2.0], requires_grad=True)
    CF.relu(x).backward(torch.full((5,), 3.0))
    assert x.grad.tolist() == [0.0, 0.0, 0.0, 0.0, 3.0]


def test_relu_saves_its_output_not_a_copy() -> None:
    saved: list[torch.Tensor] = []
    x = torch.randn(4, 5, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = CF.relu(x)
    assert len(saved) == 1 and saved[0].data_ptr() == out.data_ptr()


def test_log_softmax_is_stable_and_follows_dtype_argument() -> None:
    x = torch.tensor([[1000.0, 0.0, -1000.0]])
    torch.testing.assert_close(CF.log_softmax(x, 1), torch.log_softmax(x, 1))
    assert CF.log_softmax(x, 1, dtype=torch.float64).dtype == torch.float64


def test_log_softmax_implicit_dim_warns_like_torch() -> None:
    x = torch.randn(2, 3)
    with pytest.warns(UserWarning, match="Implicit dimension"):
        torch.testing.assert_close(CF.log_softmax(x), torch.log_softmax(x, 1))


def test_cpu_bf16_autocast_dtypes_match_builtin() -> None:
    x = torch.randn(4, 6, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert_twins_match(*twins(L.ReLU, nn.ReLU), x)
        ours, theirs = CF.log_softmax(x, 1), nn.functional.log_softmax(x, 1)
    assert ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs, **BF16_TOL)


@pytest.mark.parametrize("kwargs", [{}, {"start_dim": 0, "end_dim": 2}])
def test_flatten_and_relu_are_drop_ins(kwargs: dict) -> None:
    for custom, builtin in (twins(L.Flatten, nn.Flatten, **kwargs), twins(L.ReLU, nn.ReLU, True)):
        assert repr(custom) == repr(builtin)
        assert isinstance(custom, type(builtin))
    custom, builtin = twins(L.Flatten, nn.Flatten, **kwargs)
    assert_twins_match(custom, builtin, torch.randn(2, 3, 4, 5).transpose(1, 3))


class _Double(nn.Module):
    """Make the input a non-leaf so an in-place ReLU may overwrite it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2
