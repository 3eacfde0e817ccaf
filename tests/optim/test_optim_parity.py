"""Every hand-written optimizer against its torch.optim namesake: same weights, same batches,
100 steps, over a grid of each one's options; equal to 1e-12 in float64 and to
``assert_close``'s defaults in float32. State dicts move both ways and stepping goes on equal.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable

import pytest
import torch
from torch import nn

from cnnlab.optim import OPTIMIZERS
from cnnlab.optim.registry import Twin

TWINS = {t.name: t for t in OPTIMIZERS}
STEPS = 100

SGD_GRID = [
    {},
    {"lr": 0.05},
    {"momentum": 0.9},
    {"momentum": 0.9, "dampening": 0.3},
    {"momentum": 0.9, "nesterov": True},
    {"weight_decay": 1e-2},
    {"momentum": 0.5, "weight_decay": 1e-2, "maximize": True},
    {"momentum": 0.8, "nesterov": True, "weight_decay": 1e-3, "maximize": True},
]
RMSPROP_GRID = [
    {},
    {"lr": 1e-3, "momentum": 0.9},
    {"centered": True},
    {"centered": True, "momentum": 0.5, "weight_decay": 1e-2},
    {"maximize": True, "alpha": 0.9, "eps": 1e-6},
    {"weight_decay": 1e-2, "maximize": True, "centered": True},
]
ADAM_GRID = [
    {},
    {"amsgrad": True},
    {"weight_decay": 1e-2},
    {"weight_decay": 1e-2, "amsgrad": True, "maximize": True},
    {"betas": (0.8, 0.99), "eps": 1e-6, "lr": 1e-2},
]
GRIDS = {
    "gd": SGD_GRID,
    "sgd": SGD_GRID,
    "momentum": SGD_GRID,
    "nesterov": SGD_GRID,
    "rmsprop": RMSPROP_GRID,
    "adam": [*ADAM_GRID, {"decoupled_weight_decay": True, "weight_decay": 0.1}],
    "adamw": ADAM_GRID,
}


def _accepts(twin: Twin, options: dict) -> bool:
    """Whether ``twin.custom`` takes these options (Momentum refuses nesterov, ...)."""
    try:
        twin.custom([nn.Parameter(torch.zeros(1))], **options)
    except ValueError:
        return False
    return True


CASES = [
    pytest.param(name, options, id=f"{name}-{'-'.join(f'{k}={v}' for k, v in options.items())}")
    for name, grid in GRIDS.items()
    for options in grid
    if _accepts(TWINS[name], options)
]


def small_net(dtype: torch.dtype) -> nn.Module:
    """Conv + batch norm + linear: weights of 1, 2 and 4 dimensions, bias-free ones too."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 10),
    ).to(dtype)


def batches(dtype: torch.dtype, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(16, 1, 8, 8, generator=generator, dtype=dtype),
            torch.randint(10, (16,), generator=generator),
        )
        for _ in range(steps)
    ]


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: list,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> list[float]:
    losses = []
    for images, labels in data:
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses


def make_pair(
    twin: Twin, options: dict, dtype: torch.dtype, foreach: bool | None = None, groups=None
) -> tuple[tuple[nn.Module, torch.optim.Optimizer], tuple[nn.Module, torch.optim.Optimizer]]:
    """(custom model + optimizer, builtin model + optimizer) from identical weights."""
    custom_model = small_net(dtype)
    builtin_model = copy.deepcopy(custom_model)

    def params(model: nn.Module):
        return groups(model) if groups else model.parameters()

    custom = twin.custom(params(custom_model), **options)
    builtin_options = {**twin.builtin_options, **options}
    if foreach is not None:
        builtin_options["foreach"] = foreach
    builtin = twin.builtin(params(builtin_model), **builtin_options)
    return (custom_model, custom), (builtin_model, builtin)


def tolerance(dtype: torch.dtype) -> dict:
    return {"rtol": 0.0, "atol": 1e-12} if dtype == torch.float64 else {}


def assert_same_parameters(a: nn.Module, b: nn.Module, dtype: torch.dtype) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, **tolerance(dtype), msg=lambda m, n=name: f"{n}: {m}")


def assert_same_state(custom: torch.optim.Optimizer, builtin: torch.optim.Optimizer, dtype) -> None:
    """Same state keys, same tensors (dtype and device of ``step`` included), same groups."""
    ours, theirs = custom.state_dict(), builtin.state_dict()
    assert ours["param_groups"] == theirs["param_groups"]
    assert ours["state"].keys() == theirs["state"].keys()
    for index, state in theirs["state"].items():
        assert ours["state"][index].keys() == state.keys(), index
        for key, value in state.items():
            mine = ours["state"][index][key]
            assert mine.dtype == value.dtype and mine.device == value.device, key
            torch.testing.assert_close(mine, value, **tolerance(dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("name", "options"), CASES)
def test_100_steps_match_torch(name: str, options: dict, dtype: torch.dtype) -> None:
    (custom_model, custom), (builtin_model, builtin) = make_pair(TWINS[name], options, dtype)
    data = batches(dtype, STEPS)
    losses = train(custom_model, custom, data), train(builtin_model, builtin, data)
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert losses[0][-1] != losses[0][0]  # the weights did move
    assert_same_parameters(custom_model, builtin_model, dtype)
    assert_same_state(custom, builtin, dtype)


@pytest.mark.parametrize("name", list(TWINS))
def test_torch_foreach_path_matches_too(name: str) -> None:
    """torch's multi-tensor path (what the benchmark times) computes the same in float64."""
    options = GRIDS[name][-1] if _accepts(TWINS[name], GRIDS[name][-1]) else {}
    (cm, custom), (bm, builtin) = make_pair(TWINS[name], options, torch.float64, foreach=True)
    data = batches(torch.float64, 30)
    train(cm, custom, data), train(bm, builtin, data)
    assert_same_parameters(cm, bm, torch.float64)


def two_groups(model: nn.Module) -> list[dict]:
    """Convolution and batch norm at half the learning rate without decay, linear on defaults."""
    conv_bn = [*model[0].parameters(), *model[1].parameters()]
    return [
        {"params": conv_bn, "lr": 5e-3, "weight_decay": 0.0},
        {"params": list(model[4].parameters())},
    ]


SCHEDULERS: dict[str, Callable] = {
    "step": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.7),
    # moves momentum / betas too, where the optimizer has them
    "onecycle": lambda opt: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[0.02, 0.05], total_steps=STEPS
    ),
}


@pytest.mark.parametrize("schedule", list(SCHEDULERS))
@pytest.mark.parametrize("name", list(TWINS))
def test_param_groups_and_lr_schedulers(name: str, schedule: str) -> None:
    options = {"weight_decay": 1e-3}
    if name in ("momentum", "nesterov", "rmsprop"):
        options["momentum"] = 0.9
    dtype = torch.float64
    (cm, custom), (bm, builtin) = make_pair(TWINS[name], options, dtype, groups=two_groups)
    data = batches(dtype, STEPS)
    train(cm, custom, data, SCHEDULERS[schedule](custom))
    train(bm, builtin, data, SCHEDULERS[schedule](builtin))
    assert custom.param_groups[0]["lr"] != 5e-3  # the scheduler did act
    assert_same_parameters(cm, bm, dtype)
    assert_same_state(custom, builtin, dtype)


ROUND_TRIP = [("sgd", {"momentum": 0.9, "weight_decay": 1e-3})] + [
    (name, {"amsgrad": True} if name.startswith("adam") else {})
    for name in ("nesterov", "adam", "adamw")
]
ROUND_TRIP += [("rmsprop", {"momentum": 0.5, "centered": True})]


@pytest.mark.parametrize("direction", ["custom->torch", "torch->custom"])
@pytest.mark.parametrize(("name", "options"), ROUND_TRIP)
def test_state_dict_moves_between_them(name: str, options: dict, direction: str) -> None:
    """Train 50 steps with one, load its state into a fresh other (on a copy of the weights):
    the two then continue 50 more steps equal, and loading back gives the same state."""
    twin, dtype = TWINS[name], torch.float64
    (cm, custom), (bm, builtin) = make_pair(twin, options, dtype)
    data = batches(dtype, STEPS)
    source_model, source = (cm, custom) if direction == "custom->torch" else (bm, builtin)
    train(source_model, source, data[:50])
    target_model = copy.deepcopy(source_model)
    if direction == "custom->torch":
        target = twin.builtin(target_model.parameters(), **{**twin.builtin_options, **options})
    else:
        target = twin.custom(target_model.parameters(), **options)
    target.load_state_dict(copy.deepcopy(source.state_dict()))
    pair = (source, target) if direction == "custom->torch" else (target, source)
    assert_same_state(*pair, dtype)
    train(source_model, source, data[50:])
    train(target_model, target, data[50:])
    assert_same_parameters(source_model, target_model, dtype)
    pair = (source, target) if direction == "custom->torch" else (target, source)
    assert_same_state(*pair, dtype)


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ({"fused": True}, "fused=True would run torch's fused kernel"),
        ({"differentiable": True}, "differentiable=True"),
        ({"capturable": True}, "capturable=True"),
    ],
)
def test_flags_that_mean_other_code_are_refused(flag: dict, message: str) -> None:
    twin = TWINS["adam"]
    with pytest.raises(ValueError, match=message):
        twin.custom([nn.Parameter(torch.zeros(1))], **flag)
    torch_state = twin.builtin([nn.Parameter(torch.zeros(1))], **flag).state_dict()
    ours = twin.custom([nn.Parameter(torch.zeros(1))])
    with pytest.raises(ValueError, match=message):
        ours.load_state_dict(torch_state)


@pytest.mark.parametrize("foreach", [None, False, True])
def test_foreach_is_accepted_and_changes_nothing(foreach: bool | None) -> None:
    (cm, custom), (bm, builtin) = make_pair(TWINS["adam"], {"foreach": foreach}, torch.float64)
    data = batches(torch.float64, 10)
    train(cm, custom, data), train(bm, builtin, data)
    assert_same_parameters(cm, bm, torch.float64)


def test_momentum_and_nesterov_keep_their_promise() -> None:
    p = [nn.Parameter(torch.zeros(1))]
    with pytest.raises(ValueError, match="use Nesterov"):
        TWINS["momentum"].custom(p, nesterov=True)
    with pytest.raises(ValueError, match="use SGD"):
        TWINS["momentum"].custom(p, momentum=0)
    with pytest.raises(ValueError, match="is Momentum"):
        TWINS["nesterov"].custom(p, nesterov=False)


def test_only_parameters_with_gradients_move_and_get_state() -> None:
    """A frozen layer keeps its weights and gets no state, as in torch (SGD without momentum
    keeps no state at all)."""
    for name, options in itertools.product(("sgd", "adam", "rmsprop"), ({}, {"weight_decay": 0.1})):
        (cm, custom), (bm, builtin) = make_pair(TWINS[name], options, torch.float64)
        for model in (cm, bm):
            model[0].weight.requires_grad_(False)
        before = cm[0].weight.clone()
        data = batches(torch.float64, 5)
        train(cm, custom, data), train(bm, builtin, data)
        assert torch.equal(cm[0].weight, before)
        assert custom.state_dict()["state"].keys() == builtin.state_dict()["state"].keys()
        assert_same_parameters(cm, bm, torch.float64)
