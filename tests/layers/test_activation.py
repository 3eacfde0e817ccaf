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


# -- the activations of torchvision's mobile and modern networks ---------------------------------
#: name -> (custom factory, built-in factory, functional op for gradcheck); each twin pair is
#: built with the given kwargs. Inputs below hit every kink of the piecewise ones exactly.
ACTIVATIONS = {
    "Hardtanh": (L.Hardtanh, nn.Hardtanh, lambda x: CF.hardtanh(x, -0.75, 1.5), (-0.75, 1.5)),
    "ReLU6": (L.ReLU6, nn.ReLU6, CF.relu6, ()),
    "Hardsigmoid": (L.Hardsigmoid, nn.Hardsigmoid, CF.hardsigmoid, ()),
    "Hardswish": (L.Hardswish, nn.Hardswish, CF.hardswish, ()),
    "Sigmoid": (L.Sigmoid, nn.Sigmoid, CF.sigmoid, ()),
    "SiLU": (L.SiLU, nn.SiLU, CF.silu, ()),
    "GELU": (L.GELU, nn.GELU, CF.gelu, ()),
    "GELU-tanh": (L.GELU, nn.GELU, lambda x: CF.gelu(x, "tanh"), ("tanh",)),
}
INPLACE = {"Hardtanh", "ReLU6", "Hardsigmoid", "Hardswish", "SiLU"}
#: where the piecewise activations change slope (gradcheck's finite differences avoid them)
KINKS = torch.tensor([-3.0, -0.75, 0.0, 1.5, 3.0, 6.0], dtype=torch.float64)


def _mixed_input(shape: list[int], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Half the elements on a 0.75 grid over [-7.5, 7.5] (every kink exactly), half random."""
    gen = torch.Generator().manual_seed(seed)
    grid = torch.randint(-10, 11, shape, generator=gen).to(torch.float64) * 0.75
    noise = torch.randn(shape, generator=gen, dtype=torch.float64) * 4
    pick = torch.rand(shape, generator=gen) < 0.5
    return torch.where(pick, grid, noise).to(dtype)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_gradcheck(name: str) -> None:
    op = ACTIVATIONS[name][2]
    x = torch.randn(3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 4
    near_kink = (x[..., None] - KINKS).abs().amin(-1) < 1e-3
    x = x.masked_fill(near_kink, 0.5).requires_grad_()
    assert torch.autograd.gradcheck(op, (x,))


@layer_settings
@given(
    name=st.sampled_from(list(ACTIVATIONS)),
    shape=shapes,
    dtype=st.sampled_from([torch.float64, torch.float32]),
    inplace=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_activations_match_torch(
    name: str, shape: list[int], dtype: torch.dtype, inplace: bool, seed: int
) -> None:
    custom_cls, builtin_cls, _, args = ACTIVATIONS[name]
    inplace = inplace and name in INPLACE
    kwargs = {"inplace": True} if inplace else {}
    custom, builtin = twins(custom_cls, builtin_cls, *args, **kwargs)
    assert repr(custom) == repr(builtin) and isinstance(custom, builtin_cls)
    wrap = (lambda m: nn.Sequential(_Double(), m)) if inplace else (lambda m: m)
    assert_twins_match(wrap(custom), wrap(builtin), _mixed_input(shape, dtype, seed))


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_cpu_bf16_autocast_dtypes_match_builtin(name: str) -> None:
    custom_cls, builtin_cls, _, args = ACTIVATIONS[name]
    x = _mixed_input([4, 3, 5], torch.bfloat16, 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert_twins_match(*twins(custom_cls, builtin_cls, *args), x, **BF16_TOL)
        assert_twins_match(*twins(custom_cls, builtin_cls, *args), x.float(), **BF16_TOL)


@pytest.mark.parametrize("name", sorted(INPLACE))
def test_inplace_activation_overwrites_its_input_like_torch(name: str) -> None:
    custom_cls, builtin_cls, _, args = ACTIVATIONS[name]
    x = _mixed_input([3, 4], torch.float64, 1)
    ours, theirs = x.clone(), x.clone()
    out_ours = custom_cls(*args, inplace=True)(ours)
    out_theirs = builtin_cls(*args, inplace=True)(theirs)
    assert out_ours.data_ptr() == ours.data_ptr()
    # float64 defaults, not bit equality: torch 2.11's SiLU kernel rounds differently from 2.14's
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(out_ours, out_theirs)


def test_sigmoid_and_silu_tails_are_exact() -> None:
    """``1 / (1 + exp(-x))`` saturates cleanly: no NaN from inf/inf, 0 and 1 at the ends."""
    x = torch.tensor([-1000.0, -100.0, -20.0, 0.0, 20.0, 100.0, 1000.0], requires_grad=True)
    for ours, theirs in ((CF.sigmoid, torch.sigmoid), (CF.silu, nn.functional.silu)):
        torch.testing.assert_close(ours(x), theirs(x))
        (g_ours,) = torch.autograd.grad(ours(x).sum(), x)
        (g_theirs,) = torch.autograd.grad(theirs(x).sum(), x)
        torch.testing.assert_close(g_ours, g_theirs)


def test_gelu_rejects_an_unknown_approximation_naming_the_layer() -> None:
    layer = L.GELU()
    layer.approximate = "erf"
    with pytest.raises(ValueError, match=r"GELU\(approximate='erf'\): gelu: approximate must be"):
        layer(torch.randn(3))


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_gradient_at_kinks_and_nan_is_torchs(name: str) -> None:
    """At each kink PyTorch picks one side's slope (e.g. Hardswish: 0 at -3, 1 at 3) and a NaN
    input passes the gradient through or not; the hand-written backward picks the same."""
    custom_cls, builtin_cls, _, args = ACTIVATIONS[name]
    points = torch.cat([KINKS, KINKS + 1e-9, KINKS - 1e-9, torch.tensor([float("nan")])])
    x = points.to(torch.float64)
    for dtype in (torch.float64, torch.float32):
        assert_twins_match(*twins(custom_cls, builtin_cls, *args), x.to(dtype), equal_nan=True)
