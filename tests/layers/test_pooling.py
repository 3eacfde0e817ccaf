"""Hand-written max/avg pooling against ``torch.nn``: values, gradients, indices, layouts, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import assume, given
from hypothesis import strategies as st
from layer_testing import BF16_TOL, assert_twins_match, layer_settings, twins

import cnnlab.functional as CF
import cnnlab.layers as L

LAYOUTS = ("contiguous", "channels_last", "transposed")


def laid_out(x: torch.Tensor, layout: str) -> torch.Tensor:
    """Same values, different strides: what a conv (channels_last) or a view hands a layer."""
    if layout == "channels_last" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    return x


def distinct(*shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Values without ties (a permutation), so the max is unique and gradcheck is smooth."""
    n = torch.Size(shape).numel()
    return (torch.randperm(n, generator=torch.Generator().manual_seed(n)).to(dtype) / n).view(shape)


@st.composite
def pool_configs(draw, max_pool: bool):
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 5), st.integers(1, 5))))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if max_pool else (1, 1)
    height, width = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    batch = draw(st.sampled_from([None, 0, 1, 3]))  # None: unbatched (C, H, W)
    channels = draw(st.integers(1, 4))
    shape = (channels, height, width) if batch is None else (batch, channels, height, width)
    return {
        "kernel_size": kernel,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "ceil_mode": draw(st.booleans()),
        "shape": shape,
        "layout": draw(st.sampled_from(LAYOUTS)),
    }


def fits(config: dict) -> bool:
    """Whether torch accepts the configuration and every window sees at least one input element.

    A dilated window can skip the input entirely; ATen's backward then writes out of bounds
    (heap corruption), so those configurations are tested separately, without the built-in.
    """
    try:
        out = nn.functional.max_pool2d(
            torch.zeros(config["shape"][-3:]),
            config["kernel_size"],
            config["stride"],
            config["padding"],
            config["dilation"],
            config["ceil_mode"],
        )
    except RuntimeError:
        return False
    return not out.isinf().any()


# --- gradcheck ------------------------------------------------------------------------------

MAX_CASES = [
    {"kernel_size": 2},
    {"kernel_size": (3, 2), "stride": (2, 1)},
    {"kernel_size": 2, "stride": 3},
    {"kernel_size": 3, "stride": 2, "padding": 1},
    {"kernel_size": (2, 3), "dilation": (2, 1), "padding": (1, 1)},
    {"kernel_size": 3, "stride": 2, "ceil_mode": True},
    {"kernel_size": 2, "stride": 2, "ceil_mode": True, "padding": 1},
    {"kernel_size": 1, "stride": 1},
]
AVG_CASES = [
    {"kernel_size": 2},
    {"kernel_size": (3, 2), "stride": (2, 1)},
    {"kernel_size": 2, "stride": 3},
    {"kernel_size": 3, "stride": 2, "padding": 1},
    {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False},
    {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True},
    {
        "kernel_size": (2, 3),
        "stride": 2,
        "padding": 1,
        "ceil_mode": True,
        "count_include_pad": False,
    },
    {"kernel_size": 3, "padding": 1, "divisor_override": 5},
]


@pytest.mark.parametrize("kwargs", MAX_CASES, ids=str)
def test_max_pool_gradcheck(kwargs: dict) -> None:
    x = distinct(2, 2, 7, 5).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: CF.max_pool2d(t, **kwargs), (x,))


@pytest.mark.parametrize("kwargs", AVG_CASES, ids=str)
def test_avg_pool_gradcheck(kwargs: dict) -> None:
    x = torch.randn(2, 2, 7, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: CF.avg_pool2d(t, **kwargs), (x,))


# --- properties against torch.nn ------------------------------------------------------------


@layer_settings
@given(config=pool_configs(max_pool=True), dtype=st.sampled_from([torch.float64, torch.float32]))
def test_max_pool_matches_torch(config: dict, dtype: torch.dtype) -> None:
    """Integer-valued inputs are full of ties: values, gradients and indices must still agree."""
    assume(fits(config))
    shape, layout = config.pop("shape"), config.pop("layout")
    custom, builtin = twins(L.MaxPool2d, nn.MaxPool2d, **config)
    x = torch.randint(-3, 4, shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert_twins_match(custom, builtin, laid_out(x, layout))
    config["return_indices"] = True
    _, indices = CF.max_pool2d(x, **config)
    torch.testing.assert_close(indices, nn.functional.max_pool2d(x, **config)[1])


@layer_settings
@given(
    config=pool_configs(max_pool=False),
    count_include_pad=st.booleans(),
    divisor_override=st.sampled_from([None, 1, 7]),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_avg_pool_matches_torch(config, count_include_pad, divisor_override, dtype) -> None:
    assume(fits(config))
    shape, layout = config.pop("shape"), config.pop("layout")
    del config["dilation"]
    custom, builtin = twins(
        L.AvgPool2d,
        nn.AvgPool2d,
        **config,
        count_include_pad=count_include_pad,
        divisor_override=divisor_override,
    )
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    assert_twins_match(custom, builtin, laid_out(x, layout))


@pytest.mark.parametrize("divisor_override", [None, 5])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_global_avg_pool_matches_torch(dtype, layout, divisor_override) -> None:
    """A window as large as the input (ResNet's last pool) is one reduction, not 64 slices."""
    custom, builtin = twins(L.AvgPool2d, nn.AvgPool2d, (8, 6), divisor_override=divisor_override)
    x = torch.randn(4, 5, 8, 6, generator=torch.Generator().manual_seed(0)).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    tol = BF16_TOL if dtype == torch.bfloat16 else {}
    assert_twins_match(custom, builtin, x, **tol)
    assert CF.avg_pool2d(x, (8, 6)).shape == (4, 5, 1, 1)


@pytest.mark.parametrize("kwargs", [{"kernel_size": 2}, {"kernel_size": 3, "padding": 1}], ids=str)
def test_max_pool_routes_nan_and_minus_inf_like_torch(kwargs: dict) -> None:
    """ATen takes the last NaN of a window; an all -inf window keeps its first in-bounds element."""
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    x[0, 0, 0, :2] = float("nan")
    x[1, 2, 2:4, 2:4] = float("-inf")
    x[1, 1] = float("-inf")
    custom, builtin = twins(L.MaxPool2d, nn.MaxPool2d, **kwargs, return_indices=True)
    out_c, idx_c = custom(x)
    out_b, idx_b = builtin(x)
    torch.testing.assert_close(out_c, out_b, equal_nan=True)
    assert torch.equal(idx_c, idx_b)


def test_windows_that_miss_the_input_output_minus_inf_and_get_no_gradient() -> None:
    """Dilation 2 with padding 1 over one row: both taps of each window are padding."""
    x = torch.randn(1, 2, 1, 2, dtype=torch.float64, requires_grad=True)
    args = ((2, 1), None, (1, 0), (2, 1))
    out, indices = CF.max_pool2d(x, *args, return_indices=True)
    assert torch.equal(out, torch.full_like(out, float("-inf")))
    assert torch.equal(indices, nn.functional.max_pool2d(x, *args, return_indices=True)[1])
    out.backward(torch.ones_like(out))
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("layer", ["max", "avg"])
def test_pooling_under_cpu_bf16_autocast_matches_builtin(layer: str) -> None:
    custom, builtin = twins(
        *((L.MaxPool2d, nn.MaxPool2d) if layer == "max" else (L.AvgPool2d, nn.AvgPool2d)), 3, 2, 1
    )
    x = torch.randn(2, 4, 9, 9, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert_twins_match(custom, builtin, x, **BF16_TOL)


# --- memory: backward keeps only the argmax -------------------------------------------------


def saved_by(fn, x: torch.Tensor) -> list[torch.Tensor]:
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x.requires_grad_())
    return saved


def test_max_pool_saves_only_window_argmax() -> None:
    """One byte per output (the window position), whether or not the fast path runs."""
    x = torch.randn(2, 3, 8, 8)
    for kwargs in ({"kernel_size": 2}, {"kernel_size": 3, "stride": 2, "padding": 1}):
        saved = saved_by(lambda t, kw=kwargs: CF.max_pool2d(t, **kw), x)
        assert [(t.dtype, t.shape) for t in saved] == [(torch.uint8, (2, 3, 4, 4))]
    assert saved_by(lambda t: CF.avg_pool2d(t, 3, 2, padding=1), x) == []


# --- drop-in contract and errors --------------------------------------------------------------


@pytest.mark.parametrize(
    ("custom_cls", "builtin_cls", "kwargs"),
    [
        (L.MaxPool2d, nn.MaxPool2d, {"kernel_size": (3, 2), "stride": 1, "dilation": 2}),
        (L.AvgPool2d, nn.AvgPool2d, {"kernel_size": 3, "ceil_mode": True, "divisor_override": 2}),
    ],
)
def test_repr_and_state_dict_equal_torch(custom_cls, builtin_cls, kwargs) -> None:
    custom, builtin = twins(custom_cls, builtin_cls, **kwargs)
    assert repr(custom) == repr(builtin)
    assert custom.state_dict().keys() == builtin.state_dict().keys()
    assert isinstance(custom, builtin_cls)


@pytest.mark.parametrize(
    ("layer", "shape", "match"),
    [
        (L.MaxPool2d(2), (4, 5), r"MaxPool2d\(kernel_size=2.*expected a 3-D \(C, H, W\) or 4-D"),
        (L.AvgPool2d(2), (1, 2, 3, 4, 5), r"AvgPool2d\(kernel_size=2.*got shape \(1, 2, 3, 4, 5\)"),
        (L.MaxPool2d(2), (2, 0, 4, 4), "non-zero C, H, W"),
        (L.MaxPool2d(5), (1, 2, 3, 3), r"kernel_size=\(5, 5\).*does not fit .*\(3, 3\)"),
        (L.AvgPool2d(4, padding=1), (1, 1, 1, 1), "does not fit"),
        (L.MaxPool2d(0), (1, 1, 4, 4), r"kernel_size must be positive, got \(0, 0\)"),
        (L.MaxPool2d(2, stride=-1), (1, 1, 4, 4), "stride must be positive"),
        (L.MaxPool2d(2, dilation=0), (1, 1, 4, 4), "dilation must be positive"),
        (L.MaxPool2d(2, padding=2), (1, 1, 4, 4), "padding must be between 0 and half the kernel"),
        (L.AvgPool2d(3, padding=2), (1, 1, 4, 4), "padding must be between 0 and half the kernel"),
        (L.AvgPool2d(2, divisor_override=0), (1, 1, 4, 4), "divisor_override must be non-zero"),
    ],
)
def test_errors_name_the_layer_and_the_fix(layer: nn.Module, shape, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        layer(torch.zeros(shape))


def test_integer_input_is_rejected() -> None:
    with pytest.raises(TypeError, match="floating-point input"):
        CF.max_pool2d(torch.zeros(1, 1, 4, 4, dtype=torch.int64), 2)


# -- adaptive average pooling -------------------------------------------------------------------
@pytest.mark.parametrize("output_size", [1, (2, 3), (5, None), (9, 2)])
def test_adaptive_avg_pool2d_gradcheck(output_size) -> None:
    x = torch.randn(2, 3, 7, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: CF.adaptive_avg_pool2d(t, output_size), (x,))


@layer_settings
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)),
    out_h=st.one_of(st.none(), st.integers(1, 10)),
    out_w=st.one_of(st.none(), st.integers(1, 10)),
    dtype=st.sampled_from([torch.float64, torch.float32]),
    channels_last=st.booleans(),
    unbatched=st.booleans(),
)
def test_adaptive_avg_pool2d_matches_torch(
    shape, out_h, out_w, dtype, channels_last: bool, unbatched: bool
) -> None:
    custom, builtin = twins(L.AdaptiveAvgPool2d, nn.AdaptiveAvgPool2d, (out_h, out_w))
    assert repr(custom) == repr(builtin)
    x = torch.randn(shape, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert_twins_match(custom, builtin, x[0] if unbatched else x)


def test_adaptive_avg_pool2d_cpu_bf16_autocast_dtypes_match_builtin() -> None:
    x = torch.randn(2, 3, 7, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for size in (1, (3, 4)):
            for t in (x, x.bfloat16()):
                assert_twins_match(
                    *twins(L.AdaptiveAvgPool2d, nn.AdaptiveAvgPool2d, size), t, **BF16_TOL
                )
