"""``convert`` swaps layer classes in place and touches nothing else."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from torchvision.models.convnext import LayerNorm2d
from torchvision.ops import StochasticDepth

import cnnlab.layers as custom
from cnnlab.layers import convert
from cnnlab.layers.convert import CUSTOM_TO_BUILTIN
from cnnlab.models import MODELS


def every_layer(dtype: torch.dtype = torch.float32) -> nn.Module:
    """One instance of each supported layer, with non-default settings, nested three ways."""
    return nn.Sequential(
        nn.Conv2d(3, 4, (3, 2), stride=2, padding=1, dilation=1, groups=1, padding_mode="reflect"),
        nn.BatchNorm2d(4, eps=1e-3, momentum=None, affine=True),
        nn.SyncBatchNorm(4, momentum=0.3, track_running_stats=False),
        nn.ModuleDict(
            {
                "relu": nn.ReLU(inplace=True),
                "pools": nn.ModuleList(
                    [nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True), nn.AvgPool2d(2, 1)]
                ),
            }
        ),
        nn.Dropout(0.3),
        nn.Flatten(1),
        nn.Linear(8, 5, bias=False),
        nn.CrossEntropyLoss(weight=torch.rand(5), label_smoothing=0.1, ignore_index=2),
        nn.NLLLoss(reduction="sum"),
        nn.MSELoss(reduction="none"),
    ).to(dtype)


def settings(module: nn.Module) -> dict:
    """Everything but the registries: the constructor configuration and the train flag."""
    return {k: v for k, v in vars(module).items() if not k.startswith("_")}


def test_every_supported_layer_becomes_its_twin_and_back() -> None:
    model = every_layer()
    before = {name: (type(m), settings(m)) for name, m in model.named_modules()}

    convert(model, to="custom")
    for name, module in model.named_modules():
        builtin_type, config = before[name]
        expected = (
            getattr(custom, builtin_type.__name__)
            if builtin_type in CUSTOM_TO_BUILTIN.values()
            else builtin_type
        )
        assert type(module) is expected, name
        assert settings(module) == config, name

    convert(model, to="builtin")
    assert {name: (type(m), settings(m)) for name, m in model.named_modules()} == before


@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_trip_keeps_state_dict_bit_identical_and_parameters_shared(name: str) -> None:
    model = MODELS[name](impl="builtin", in_shape=(3, 32, 32), num_classes=10)
    reference = copy.deepcopy(model.state_dict())
    params = list(model.parameters())

    convert(convert(model, to="custom"), to="builtin")

    state = model.state_dict()
    assert list(state) == list(reference)
    for key, value in reference.items():
        assert torch.equal(state[key], value) and state[key].dtype == value.dtype, key
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_converted_model_computes_the_same_function(name: str) -> None:
    builtin = MODELS[name](impl="builtin", in_shape=(1, 8, 8), num_classes=10).double().eval()
    converted = convert(copy.deepcopy(builtin), to="custom")
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(converted(x), builtin(x))


@pytest.mark.parametrize("training", [True, False])
def test_mode_dtype_and_buffers_are_kept(training: bool) -> None:
    model = every_layer(torch.float64).train(training)
    bn = model[1]
    running_mean = bn.running_mean
    convert(model, to="custom")
    assert all(m.training is training for m in model.modules())
    assert model[1].running_mean is running_mean
    assert all(p.dtype == torch.float64 for p in model.parameters())


def test_unsupported_layers_and_subclasses_are_left_alone() -> None:
    class MyConv(nn.Conv2d):
        pass

    elu, conv1d, mine = nn.ELU(), nn.Conv1d(1, 1, 3), MyConv(1, 1, 3)
    model = nn.Sequential(elu, conv1d, mine, nn.Identity())
    convert(model, to="custom")
    assert model[0] is elu and model[1] is conv1d and model[2] is mine
    assert type(model[3]) is nn.Identity


def test_shared_layers_stay_shared() -> None:
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(2, 2), relu, nn.Linear(2, 2), relu)
    convert(model, to="custom")
    assert model[1] is model[3]
    assert type(model[1]) is custom.ReLU


def test_a_bare_layer_is_returned_converted() -> None:
    layer = nn.Linear(3, 2)
    twin = convert(layer, to="custom")
    assert type(twin) is custom.Linear
    assert twin.weight is layer.weight and twin.bias is layer.bias


def test_twin_does_not_share_registries_with_the_original() -> None:
    layer = nn.Linear(3, 2)
    twin = convert(layer, to="custom")
    twin.extra = nn.Parameter(torch.zeros(1))
    assert "extra" not in layer._parameters


@pytest.mark.parametrize("builtin", list(CUSTOM_TO_BUILTIN.values()), ids=lambda c: c.__name__)
def test_custom_layers_hold_exactly_the_builtin_state(builtin: type[nn.Module]) -> None:
    """The contract that makes swapping ``__dict__`` exact: no extra instance state either way."""
    args = {
        nn.Conv2d: (3, 4, 3),
        nn.Linear: (3, 4),
        nn.BatchNorm2d: (4,),
        nn.SyncBatchNorm: (4,),
        nn.MaxPool2d: (2,),
        nn.AvgPool2d: (2,),
        nn.AdaptiveAvgPool2d: (2,),
        nn.LayerNorm: (4,),
        LayerNorm2d: (4,),
        StochasticDepth: (0.2, "row"),
    }.get(builtin, ())
    twin = getattr(custom, builtin.__name__)
    # SyncBatchNorm shares torch's base class only: DDP rejects torch.nn.SyncBatchNorm on CPU.
    parent = builtin if twin is not custom.SyncBatchNorm else nn.modules.batchnorm._BatchNorm
    assert issubclass(twin, parent)
    assert set(vars(twin(*args))) == set(vars(builtin(*args)))
    assert repr(twin(*args)) == repr(builtin(*args))


def test_bad_target_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"must be one of \('custom', 'builtin'\)"):
        convert(nn.Linear(1, 1), to="torch")
