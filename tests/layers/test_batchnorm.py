"""Hand-written BatchNorm2d against ``torch.nn.BatchNorm2d``: outputs, gradients, running stats."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st
from layer_testing import BF16_TOL, assert_twins_match, layer_settings, twins

import cnnlab.functional as CF
import cnnlab.layers as L

LAYOUTS = {
    "contiguous": lambda x: x,
    "channels_last": lambda x: x.contiguous(memory_format=torch.channels_last),
    "transposed": lambda x: x.transpose(2, 3).contiguous().transpose(2, 3),
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_gradcheck(training: bool, affine: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 5, 4, dtype=torch.float64, generator=gen).requires_grad_()
    weight = torch.rand(2, dtype=torch.float64, generator=gen).add_(0.5).requires_grad_()
    bias = torch.randn(2, dtype=torch.float64, generator=gen).requires_grad_()
    mean, var = torch.randn(2, dtype=torch.float64), torch.rand(2, dtype=torch.float64) + 0.5

    def fn(*tensors: torch.Tensor) -> torch.Tensor:
        params = tensors[1:] if affine else (None, None)
        return CF.batch_norm(tensors[0], mean.clone(), var.clone(), *params, training=training)

    assert torch.autograd.gradcheck(fn, (x, weight, bias) if affine else (x,))


@layer_settings
@given(
    shape=st.tuples(st.integers(2, 4), st.integers(1, 4), st.integers(1, 5), st.integers(1, 5)),
    affine=st.booleans(),
    track=st.booleans(),
    momentum=st.sampled_from([0.1, 0.5, None]),
    eps=st.sampled_from([1e-5, 1e-2]),
    training=st.booleans(),
    layout=st.sampled_from(sorted(LAYOUTS)),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_matches_torch(shape, affine, track, momentum, eps, training, layout, dtype) -> None:
    kwargs = {"eps": eps, "momentum": momentum, "affine": affine, "track_running_stats": track}
    custom, builtin = twins(L.BatchNorm2d, nn.BatchNorm2d, shape[1], dtype=dtype, **kwargs)
    custom.train(training)
    builtin.train(training)
    gen = torch.Generator().manual_seed(0)
    x = LAYOUTS[layout](torch.randn(shape, dtype=dtype, generator=gen) * 3 + 1)
    assert_twins_match(custom, builtin, x)
    for name, buffer in builtin.state_dict().items():
        torch.testing.assert_close(custom.state_dict()[name], buffer, msg=name)


@pytest.mark.parametrize("momentum", [0.1, None], ids=["ema", "cumulative"])
def test_running_stats_after_training_then_eval(momentum: float | None) -> None:
    custom, builtin = twins(L.BatchNorm2d, nn.BatchNorm2d, 3, momentum=momentum)
    gen = torch.Generator().manual_seed(0)
    for step in range(5):
        x = torch.randn(4, 3, 6, 5, generator=gen) * (step + 1) + step
        custom(x)
        builtin(x)
    for name, buffer in builtin.state_dict().items():
        torch.testing.assert_close(custom.state_dict()[name], buffer, msg=name)
    assert custom.num_batches_tracked.item() == 5
    custom.eval()
    builtin.eval()
    assert_twins_match(custom, builtin, torch.randn(2, 3, 6, 5, generator=gen))


def test_zero_size_batch_passes_through_like_torch() -> None:
    custom, builtin = twins(L.BatchNorm2d, nn.BatchNorm2d, 3)
    assert_twins_match(custom, builtin, torch.randn(0, 3, 4, 4))
    torch.testing.assert_close(custom.running_mean, builtin.running_mean)


def test_saves_input_and_statistics_not_a_normalised_copy() -> None:
    saved: list[torch.Tensor] = []
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    layer = L.BatchNorm2d(3)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(x)
    big = [t for t in saved if t.numel() > 3]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr()


@pytest.mark.parametrize("input_dtype", [torch.bfloat16, torch.float32])
def test_cpu_bf16_autocast_matches_builtin(input_dtype: torch.dtype) -> None:
    """bf16 input with float32 parameters: statistics in float32, output in the input's dtype."""
    custom, builtin = twins(L.BatchNorm2d, nn.BatchNorm2d, 4)
    x = torch.randn(3, 4, 5, 5).to(input_dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert_twins_match(custom, builtin, x, **BF16_TOL)
    torch.testing.assert_close(custom.running_var, builtin.running_var, **BF16_TOL)


def test_drop_in_repr_and_state_dict() -> None:
    custom, builtin = twins(L.BatchNorm2d, nn.BatchNorm2d, 8, eps=1e-3, momentum=None)
    assert repr(custom) == repr(builtin) and isinstance(custom, nn.BatchNorm2d)
    assert list(custom.state_dict()) == list(builtin.state_dict())
    custom.load_state_dict(builtin.state_dict())


@pytest.mark.parametrize(
    ("shape", "match", "training"),
    [
        ((2, 32, 4, 4), r"BatchNorm2d\(64\) expected 64 channels, got 32", True),
        ((64, 4, 4), r"BatchNorm2d\(64\) expected a 4-D \(N, C, H, W\) input, got 3-D", True),
        ((1, 64, 1, 1), "expected more than 1 value per channel when training", True),
    ],
)
def test_errors_name_the_layer(shape, match: str, training: bool) -> None:
    with pytest.raises(ValueError, match=match):
        L.BatchNorm2d(64).train(training)(torch.randn(shape))


def test_mixed_dtype_and_device_errors() -> None:
    layer = L.BatchNorm2d(3)
    with pytest.raises(
        TypeError, match=r"BatchNorm2d\(3.*running_mean is torch.float32 but input is torch.float64"
    ):
        layer(torch.randn(2, 3, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="input is on cpu but running_mean is on meta"):
        CF.batch_norm(torch.randn(2, 3, 4, 4), torch.zeros(3, device="meta"), None, training=True)
    with pytest.raises(ValueError, match="running_mean and running_var are required"):
        CF.batch_norm(torch.randn(2, 3, 4, 4), None, None, training=False)
