"""Hand-written LayerNorm (and torchvision ConvNeXt's LayerNorm2d) against the built-ins."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from hypothesis import assume, given
from hypothesis import strategies as st
from layer_testing import BF16_TOL, assert_twins_match, layer_settings, twins
from torchvision.models.convnext import LayerNorm2d

import cnnlab.functional as CF
import cnnlab.layers as L


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_gradcheck(affine: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, dtype=torch.float64, generator=gen).requires_grad_()
    w = torch.randn(4, 5, dtype=torch.float64, generator=gen).requires_grad_() if affine else None
    b = torch.randn(4, 5, dtype=torch.float64, generator=gen).requires_grad_() if affine else None
    inputs = (x, w, b) if affine else (x,)
    assert torch.autograd.gradcheck(
        lambda x, w=None, b=None: CF.layer_norm(x, (4, 5), w, b, eps=1e-3), inputs
    )


@layer_settings
@given(
    batch=st.lists(st.integers(0, 3), min_size=0, max_size=2),
    normalized=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    affine=st.booleans(),
    bias=st.booleans(),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_layer_norm_matches_torch(
    batch: list[int], normalized: list[int], affine: bool, bias: bool, dtype: torch.dtype
) -> None:
    # One element normalises to exactly 0 (x - mean = 0), and the float32 kernels' rounding of
    # the mean, times 1/sqrt(eps) = 316, is all that is compared then: noise against noise.
    assume(math.prod(normalized) > 1 or dtype == torch.float64)
    custom, builtin = twins(
        L.LayerNorm, nn.LayerNorm, normalized, elementwise_affine=affine, bias=bias, dtype=dtype
    )
    assert (
        repr(custom) == repr(builtin) and custom.state_dict().keys() == builtin.state_dict().keys()
    )
    if affine:  # not the initial ones and zeros, so every term of the gradients shows
        for a, b in zip(custom.parameters(), builtin.parameters(), strict=True):
            with torch.no_grad():
                a.copy_(torch.randn_like(a)), b.copy_(a)
    x = torch.randn(*batch, *normalized, dtype=dtype) * 3 + 1
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {}
    assert_twins_match(custom, builtin, x, **tol)


def test_layer_norm_2d_matches_convnexts_on_channels_last_input() -> None:
    custom, builtin = twins(L.LayerNorm2d, LayerNorm2d, 4, eps=1e-6, dtype=torch.float64)
    assert repr(custom) == repr(builtin)
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    assert_twins_match(custom, builtin, x)


def test_layer_norm_cpu_bf16_autocast_dtypes_match_builtin() -> None:
    """bf16 input with float32 parameters: bf16 output, float32 weight gradients, as ATen."""
    x = torch.randn(4, 3, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert_twins_match(*twins(L.LayerNorm, nn.LayerNorm, 6), x.bfloat16(), **BF16_TOL)
        assert_twins_match(*twins(L.LayerNorm, nn.LayerNorm, 6), x, **BF16_TOL)


def test_layer_norm_shape_mismatch_is_one_line_naming_the_layer() -> None:
    with pytest.raises(ValueError, match=r"LayerNorm\(\(6,\).*trailing dimensions must be"):
        L.LayerNorm(6)(torch.randn(2, 5))
