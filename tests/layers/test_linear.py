"""The hand-written Linear against torch.nn.Linear: gradients, random shapes, AMP, drop-in, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st
from layer_testing import BF16_TOL, assert_twins_match, layer_settings, twins

import cnnlab.functional as CF
import cnnlab.layers as L


@pytest.mark.parametrize("lead", [(), (3,), (2, 3), (0,)], ids=["1d", "2d", "3d", "empty"])
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck(lead: tuple[int, ...], bias: bool) -> None:
    x = torch.randn(*lead, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True) if bias else None
    assert torch.autograd.gradcheck(CF.linear, (x, w, b))


@layer_settings
@given(
    lead=st.lists(st.integers(0, 4), min_size=0, max_size=3),
    features=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    bias=st.booleans(),
    transposed=st.booleans(),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_matches_torch(
    lead: list[int], features: tuple[int, int], bias: bool, transposed: bool, dtype: torch.dtype
) -> None:
    in_features, out_features = features
    custom, builtin = twins(L.Linear, nn.Linear, in_features, out_features, bias=bias, dtype=dtype)
    x = torch.randn(*lead, in_features, dtype=dtype)
    if transposed and x.dim() >= 2:  # same shape, non-contiguous memory
        x = torch.randn(*lead[:-1], in_features, lead[-1], dtype=dtype).transpose(-1, -2)
    assert_twins_match(custom, builtin, x)


def test_autocast_bf16_matches_builtin() -> None:
    custom, builtin = twins(L.Linear, nn.Linear, 64, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert_twins_match(custom, builtin, torch.randn(8, 64), **BF16_TOL)
    assert custom.weight.grad.dtype == torch.float32


def test_frozen_weight_skips_its_gradient() -> None:
    layer = L.Linear(3, 2)
    layer.weight.requires_grad_(False)
    layer(torch.randn(4, 3)).sum().backward()
    assert layer.weight.grad is None
    torch.testing.assert_close(layer.bias.grad, torch.full((2,), 4.0))


@pytest.mark.parametrize("bias", [True, False])
def test_drop_in_for_torch_nn(bias: bool) -> None:
    custom, builtin = twins(L.Linear, nn.Linear, 7, 3, bias=bias)
    assert isinstance(custom, nn.Linear)
    assert repr(custom) == repr(builtin)
    assert custom.state_dict().keys() == builtin.state_dict().keys()
    for name, tensor in builtin.state_dict().items():
        torch.testing.assert_close(custom.state_dict()[name], tensor, rtol=0, atol=0)

    fresh_custom, fresh_builtin = L.Linear(7, 3, bias=bias), nn.Linear(7, 3, bias=bias)
    fresh_custom.load_state_dict(builtin.state_dict())
    fresh_builtin.load_state_dict(custom.state_dict())
    x = torch.randn(5, 7)
    torch.testing.assert_close(fresh_custom(x), builtin(x))
    torch.testing.assert_close(fresh_builtin(x), custom(x))


def test_wrong_feature_count_names_the_layer() -> None:
    with pytest.raises(
        ValueError,
        match=r"Linear\(in_features=2048, out_features=512, bias=True\): linear expected .*2048",
    ):
        L.Linear(2048, 512)(torch.randn(4, 128, 4, 4))


def test_scalar_input() -> None:
    with pytest.raises(ValueError, match="last dimension has 3 features"):
        L.Linear(3, 2)(torch.tensor(1.0))


def test_mixed_dtypes_say_how_to_fix() -> None:
    with pytest.raises(TypeError, match=r"input is torch.float64 but weight is torch.float32"):
        L.Linear(3, 2)(torch.randn(4, 3, dtype=torch.float64))


def test_mixed_devices_say_how_to_fix() -> None:
    with pytest.raises(ValueError, match=r"input is on meta but weight is on cpu"):
        L.Linear(3, 2)(torch.empty(4, 3, device="meta"))


def test_bad_weight_and_bias_shapes() -> None:
    with pytest.raises(ValueError, match="2-D weight"):
        CF.linear(torch.randn(4, 3), torch.randn(2, 3, 1))
    with pytest.raises(ValueError, match=r"bias of shape \(2,\)"):
        CF.linear(torch.randn(4, 3), torch.randn(2, 3), torch.randn(3))
