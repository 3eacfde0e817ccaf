"""The hand-written Conv2d against torch.nn.Conv2d: gradients, random configs, AMP, drop-in, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st
from layer_testing import BF16_TOL, assert_twins_match, layer_settings, twins

import cnnlab.functional as CF
import cnnlab.functional._conv_math as conv_math
import cnnlab.functional._im2col as im2col_module
import cnnlab.layers as L

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

# (in, out, layer kwargs, input H x W): each row adds one argument the others do not cover.
GRADCHECK_GRID = [
    (2, 3, {"kernel_size": 3}, (7, 5)),
    (2, 3, {"kernel_size": (3, 2), "padding": (1, 2)}, (7, 5)),
    (2, 2, {"kernel_size": 2, "stride": 3}, (7, 5)),  # stride > kernel: skipped pixels
    (2, 2, {"kernel_size": 3, "stride": (2, 1), "dilation": (2, 1), "padding": 1}, (7, 5)),
    (4, 6, {"kernel_size": 3, "groups": 2, "padding": 1}, (5, 5)),
    (3, 6, {"kernel_size": 3, "groups": 3}, (5, 6)),  # depthwise, channel multiplier 2
    (2, 2, {"kernel_size": 4, "padding": "same", "dilation": (1, 2)}, (6, 7)),  # even kernel
    (2, 2, {"kernel_size": 2, "padding": "valid", "bias": False}, (4, 3)),
    (2, 3, {"kernel_size": 1, "padding": 2}, (3, 3)),  # padding wider than the kernel
    *[
        (2, 2, {"kernel_size": (3, 2), "padding": (1, 2), "padding_mode": mode}, (5, 4))
        for mode in PADDING_MODES[1:]
    ],
    (2, 2, {"kernel_size": 3, "padding": "same", "padding_mode": "reflect"}, (5, 4)),
]


@pytest.mark.parametrize("cin, cout, kwargs, hw", GRADCHECK_GRID)
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_gradcheck(cin: int, cout: int, kwargs: dict, hw: tuple[int, int], batched: bool) -> None:
    layer = L.Conv2d(cin, cout, **kwargs).double()
    shape = (2, cin, *hw) if batched else (cin, *hw)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    params = dict(layer.named_parameters())

    def conv(x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(layer, dict(zip(params, values, strict=True)), (x,))

    assert torch.autograd.gradcheck(conv, (x, *params.values()), fast_mode=True)


@st.composite
def conv_configs(draw: st.DrawFn) -> tuple[dict, tuple[int, ...]]:
    """A random valid (layer kwargs, input shape) pair over every Conv2d argument."""
    groups = draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    mode = draw(st.sampled_from(PADDING_MODES))
    if draw(st.booleans()):
        stride = (1, 1)
        padding = draw(st.sampled_from(["same", "valid"]))
    else:
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True)]
    # The input covers the kernel, and exceeds the padding (reflect needs pad < size).
    pads = (0, 0) if isinstance(padding, str) else padding
    hw = [max(s, p + 1) + draw(st.integers(0, 4)) for s, p in zip(span, pads, strict=True)]
    kwargs = {
        "in_channels": groups * draw(st.integers(1, 3)),
        "out_channels": groups * draw(st.integers(1, 3)),
        "kernel_size": kernel,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": groups,
        "bias": draw(st.booleans()),
        "padding_mode": mode,
    }
    batch = draw(st.sampled_from([None, 0, 1, 3]))  # None: unbatched (C, H, W)
    shape = (kwargs["in_channels"], *hw) if batch is None else (batch, kwargs["in_channels"], *hw)
    return kwargs, shape


def make_input(shape: tuple[int, ...], layout: str, dtype: torch.dtype) -> torch.Tensor:
    x = torch.randn(shape, dtype=dtype)
    if layout == "channels_last" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other column of a wider tensor: no dense layout at all
        wide = torch.randn(*shape[:-1], 2 * shape[-1], dtype=dtype)
        return wide[..., ::2]
    return x


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@layer_settings
@given(
    config=conv_configs(),
    layout=st.sampled_from(["contiguous", "channels_last", "strided"]),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_matches_torch(
    config: tuple[dict, tuple[int, ...]], layout: str, dtype: torch.dtype
) -> None:
    kwargs, shape = config
    custom, builtin = twins(L.Conv2d, nn.Conv2d, dtype=dtype, **kwargs)
    assert_twins_match(custom, builtin, make_input(shape, layout, dtype))


def test_functional_matches_torch() -> None:
    x, w, b = torch.randn(2, 4, 9, 8), torch.randn(6, 2, 3, 2), torch.randn(6)
    args = {"stride": (2, 1), "padding": (1, 2), "dilation": (1, 2), "groups": 2}
    expected = nn.functional.conv2d(x, w, b, **args)
    torch.testing.assert_close(CF.conv2d(x, w, b, **args), expected)


def test_output_is_channels_last_whatever_the_input_layout() -> None:
    """The whole network stays channels-last, which is what keeps im2col a single copy."""
    layer = L.Conv2d(3, 8, 3, padding=1)
    out = layer(torch.randn(2, 3, 6, 6))
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layer_kwargs", [{}, {"groups": 2}])
def test_autocast_bf16_matches_builtin(layer_kwargs: dict) -> None:
    custom, builtin = twins(L.Conv2d, nn.Conv2d, 4, 6, 3, padding=1, **layer_kwargs)
    x = torch.randn(2, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert_twins_match(custom, builtin, x, **BF16_TOL)
    assert custom.weight.grad.dtype == torch.float32  # params stay fp32 under AMP


def test_frozen_input_and_weight_skip_their_gradients() -> None:
    layer = L.Conv2d(2, 3, 3).requires_grad_(False)
    layer.bias.requires_grad_(True)
    out = layer(torch.randn(1, 2, 5, 5))
    out.sum().backward()
    assert layer.weight.grad is None
    torch.testing.assert_close(layer.bias.grad, torch.full((3,), 9.0))


def test_double_backward_is_refused_not_silently_wrong() -> None:
    layer = L.Conv2d(2, 3, 3)
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    with pytest.raises(
        RuntimeError, match="Conv2dFunction: the hand-written backward is first-order"
    ):
        torch.autograd.grad(layer(x).pow(2).sum(), x, create_graph=True)


def test_stacked_layers_match_torch() -> None:
    """Consecutive convolutions, channels-last between them, match torch end to end."""
    custom = nn.Sequential(L.Conv2d(3, 8, 3, padding=1), nn.ReLU(), L.Conv2d(8, 4, 5, stride=2))
    builtin = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 5, stride=2))
    builtin.load_state_dict(custom.state_dict())
    assert_twins_match(custom, builtin, torch.randn(2, 3, 12, 12))


@pytest.mark.parametrize("stride", [1, 2])
def test_patch_matrix_built_in_batch_chunks_matches_one_shot(monkeypatch, stride) -> None:
    """A batch split into several im2col chunks (forward, grad_input and grad_weight) is exact."""
    monkeypatch.setattr(im2col_module, "CPU_CHUNK_BYTES", 3000)  # a few images per chunk
    custom = L.Conv2d(3, 5, 3, stride=stride, padding=1)
    builtin = nn.Conv2d(3, 5, 3, stride=stride, padding=1)
    builtin.load_state_dict(custom.state_dict())
    x = torch.randn(7, 3, 9, 9, dtype=torch.float64)
    assert_twins_match(custom.double(), builtin.double(), x)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 3, "padding": 1},
        {"kernel_size": (3, 2), "padding": (2, 0), "dilation": (2, 1), "stride": (1, 2)},
        {"kernel_size": (1, 4), "padding": "same", "dilation": (1, 2)},
        {"kernel_size": 5, "padding": 1, "bias": False},
    ],
    ids=["3x3", "dilated-h-strided-w", "1x4-same", "5x5-no-bias"],
)
@pytest.mark.parametrize("by_rows", [True, False], ids=["kernel-rows", "im2col"])
@pytest.mark.parametrize("by_column", [True, False], ids=["wgrad-by-column", "wgrad-by-row"])
def test_both_patch_layouts_match_torch(
    monkeypatch, kwargs: dict, by_rows: bool, by_column: bool
) -> None:
    """The CPU's kernel-row correlation (used in float32/64 for stride 1 in height), the single
    im2col GEMM and the transposed patch matrix of few-channel weight gradients give torch's
    numbers, chunked or not, in forward and every gradient."""
    monkeypatch.setattr(conv_math, "_by_kernel_rows", lambda *_: by_rows)
    monkeypatch.setattr(conv_math, "_by_column", lambda *_: by_column)
    monkeypatch.setattr(im2col_module, "CPU_CHUNK_BYTES", 5000)
    custom = L.Conv2d(3, 4, **kwargs)
    builtin = nn.Conv2d(3, 4, **kwargs)
    builtin.load_state_dict(custom.state_dict())
    x = torch.randn(5, 3, 9, 10, dtype=torch.float64)
    assert_twins_match(custom.double(), builtin.double(), x)
    # a first layer: no input gradient, so the weight gradient is computed on its own
    g = torch.randn(builtin(x).shape, dtype=torch.float64)
    for twin in (custom, builtin):
        twin.zero_grad(set_to_none=True)
        twin(x).backward(g)
    torch.testing.assert_close(custom.weight.grad, builtin.weight.grad)


def test_training_after_inference_mode() -> None:
    """Lightning validates under inference_mode before training; buffers must survive that."""
    layer = L.Conv2d(3, 4, 3, padding=1)
    with torch.inference_mode():
        layer(torch.randn(2, 3, 16, 16))
    layer(torch.randn(2, 3, 16, 16)).sum().backward()
    assert layer.weight.grad is not None


# --- drop-in contract -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"in_channels": 3, "out_channels": 16, "kernel_size": 3},
        {
            "in_channels": 4,
            "out_channels": 8,
            "kernel_size": (3, 5),
            "stride": 2,
            "padding": "valid",
            "dilation": 2,
            "groups": 4,
            "bias": False,
            "padding_mode": "reflect",
        },
    ],
)
def test_drop_in_for_torch_nn(kwargs: dict) -> None:
    custom, builtin = twins(L.Conv2d, nn.Conv2d, **kwargs)
    assert isinstance(custom, nn.Conv2d)
    assert repr(custom) == repr(builtin)
    assert custom.state_dict().keys() == builtin.state_dict().keys()
    for name, tensor in builtin.state_dict().items():
        torch.testing.assert_close(custom.state_dict()[name], tensor, rtol=0, atol=0)

    fresh_custom, fresh_builtin = L.Conv2d(**kwargs), nn.Conv2d(**kwargs)
    fresh_custom.load_state_dict(builtin.state_dict())
    fresh_builtin.load_state_dict(custom.state_dict())
    x = torch.randn(2, kwargs["in_channels"], 11, 11)
    torch.testing.assert_close(fresh_custom(x), builtin(x))
    torch.testing.assert_close(fresh_builtin(x), custom(x))


# --- errors -----------------------------------------------------------------------------------


def test_wrong_channel_count_names_the_layer() -> None:
    with pytest.raises(ValueError, match=r"Conv2d\(3, 16, .*expected input with 3 channels, got 5"):
        L.Conv2d(3, 16, 3)(torch.randn(1, 5, 8, 8))


@pytest.mark.parametrize("shape", [(8, 8), (1, 1, 3, 8, 8)])
@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_wrong_rank(shape: tuple[int, ...], mode: str) -> None:
    with pytest.raises(ValueError, match=r"Conv2d\(3, 4.*expected a 3-D \(C, H, W\) or 4-D"):
        L.Conv2d(3, 4, 3, padding=1, padding_mode=mode)(torch.randn(shape))


def test_kernel_larger_than_padded_input() -> None:
    with pytest.raises(ValueError, match=r"kernel .*3x5.* larger than the padded input \(4x4\)"):
        L.Conv2d(1, 1, (3, 5), padding=1)(torch.randn(1, 1, 2, 2))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"stride": 0}, "positive stride"),
        ({"dilation": (1, -1)}, "positive dilation"),
        ({"padding": -1}, "non-negative padding"),
        ({"padding": "full"}, "'valid', 'same'"),
        ({"groups": 0}, "groups to be a positive int"),
        ({"groups": 3}, "groups=3 must divide the 4 output channels"),
    ],
)
def test_invalid_arguments(kwargs: dict, message: str) -> None:
    x, w = torch.randn(1, 4, 5, 5), torch.randn(4, 2, 3, 3)
    with pytest.raises(ValueError, match=message):
        CF.conv2d(x, w, **{"groups": 2, **kwargs})


def test_same_padding_with_stride() -> None:
    with pytest.raises(ValueError, match="padding='same' needs stride 1"):
        CF.conv2d(torch.randn(1, 1, 5, 5), torch.randn(1, 1, 3, 3), stride=2, padding="same")


def test_empty_weight() -> None:
    with pytest.raises(ValueError, match="non-empty weight"):
        CF.conv2d(torch.randn(1, 0, 5, 5), torch.randn(2, 0, 3, 3))


def test_mixed_dtypes_say_how_to_fix() -> None:
    with pytest.raises(
        TypeError, match=r"input is torch.float64 but weight is torch.float32.*cast"
    ):
        L.Conv2d(1, 1, 3)(torch.randn(1, 1, 5, 5, dtype=torch.float64))


def test_mismatched_bias() -> None:
    with pytest.raises(ValueError, match=r"bias of shape \(2,\)"):
        CF.conv2d(torch.randn(1, 1, 5, 5), torch.randn(2, 1, 3, 3), torch.randn(3))


def test_mixed_devices_say_how_to_fix() -> None:
    x = torch.empty(1, 1, 5, 5, device="meta")  # any device other than the weight's
    with pytest.raises(ValueError, match=r"input is on meta but weight is on cpu.*model.to"):
        L.Conv2d(1, 1, 3)(x)


@pytest.mark.parametrize("shape", [(8, 1, 3, 3), (8, 4, 1, 1), (8, 4, 3, 3)])
def test_weight_grad_has_the_weight_strides(shape) -> None:
    """DDP buckets gradients by the parameter's strides; size-1 dims must not change them."""
    out_channels, in_channels, kh, kw = shape
    layer = L.Conv2d(in_channels, out_channels, (kh, kw))
    layer(torch.randn(2, in_channels, 5, 5)).sum().backward()
    assert layer.weight.grad.stride() == layer.weight.stride()
