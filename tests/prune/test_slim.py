"""Structured pruning made physical: channels cut out, the same function, smaller and still
trainable; models whose channels are tied by residual additions are refused in one line."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnlab.models import VGG, SeedCNN
from cnnlab.prune import masks as M
from cnnlab.prune.options import PruneConfigError
from cnnlab.prune.slim import check_sliceable, slim_model_config, slim_state_dict

IN_SHAPE = (3, 16, 16)


def build(target: str, **kwargs) -> nn.Module:
    cls = {"cnnlab.models.SeedCNN": SeedCNN, "cnnlab.models.VGG": VGG}[target]
    return cls(in_shape=IN_SHAPE, num_classes=10, **kwargs)


def file_size(model: nn.Module, tmp_path: Path, name: str) -> int:
    path = tmp_path / f"{name}.pt"
    torch.save(model.state_dict(), path)
    return path.stat().st_size


CASES = (
    ("cnnlab.models.SeedCNN", {"channels": [8, 16, 32], "hidden": 64}),
    ("cnnlab.models.SeedCNN", {"channels": [8, 16, 32], "hidden": 64, "batch_norm": True}),
    ("cnnlab.models.VGG", {"cfg": [8, "M", 16, 16, "M"], "hidden": 32, "dropout": 0.0}),
)


@pytest.mark.parametrize("impl", ("custom", "builtin"))
@pytest.mark.parametrize(("target", "options"), CASES)
@pytest.mark.parametrize("scope", ("layer", "global"))
def test_cutting_channels_out_keeps_the_masked_function_and_shrinks_the_model(
    impl: str, target: str, options: dict, scope: str, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = build(target, impl=impl, **options)
    with torch.no_grad():  # trained-looking BN statistics and shifts
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
                m.bias.uniform_(-0.5, 0.5)
    model.eval()
    x = torch.randn(5, *IN_SHAPE)

    kept = M.kept_channels(
        [m for _, m in M.prunable_layers(model, ("conv", "linear"), structured=True)], 0.5, scope
    )
    state, convs, hidden = slim_state_dict(model, kept)
    config = slim_model_config({"_target_": target, **options}, convs, hidden)
    slim = build(target, impl=impl, **{k: v for k, v in config.items() if k != "_target_"})
    slim.load_state_dict(state)  # strict: every key and shape fits the rebuilt model
    slim.eval()

    M.apply_masks(M.channel_masks(kept, M.following_batchnorm(model)))  # the same cut, as masks
    torch.testing.assert_close(slim(x), model(x), rtol=1e-5, atol=1e-5)

    if scope == "layer":
        assert convs == [c - round(0.5 * c) for c in options.get("channels", [8, 16, 16])]
        assert hidden == [options["hidden"] // 2]
    convs_before = [m.weight.shape for m in model.modules() if isinstance(m, nn.Conv2d)]
    convs_after = [m.weight.shape for m in slim.modules() if isinstance(m, nn.Conv2d)]
    M.bake(model)
    ratio = file_size(slim, tmp_path, "slim") / file_size(model, tmp_path, "dense")
    if scope == "layer":  # every layer loses half its channels (and inputs): about 1/4 the size
        assert all(a.numel() < b.numel() for a, b in zip(convs_after, convs_before, strict=True))
        assert ratio < 0.5
    else:  # half of all channels, wherever they are least important
        assert sum(a.numel() for a in convs_after) < sum(b.numel() for b in convs_before)
        assert ratio < 0.8

    slim.train()  # and it trains: forward, backward, a step that lowers the loss
    optimizer = torch.optim.SGD(slim.parameters(), lr=0.05)
    y = torch.arange(5)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(slim(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(p.grad is not None for p in slim.parameters())
    assert losses[-1] < losses[0]


def test_slim_state_dict_loads_with_weights_only() -> None:
    model = build("cnnlab.models.SeedCNN", impl="custom", channels=[8, 16, 32], hidden=64)
    layers = [m for _, m in M.prunable_layers(model, ("conv",), structured=True)]
    state, convs, hidden = slim_state_dict(model, M.kept_channels(layers, 0.25))
    assert convs == [6, 12, 24] and hidden == [64]  # linear layers left whole
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True).keys() == state.keys()


@pytest.mark.parametrize(
    ("target", "name"), (("cnnlab.models.ResNet", "ResNet"), ("cnnlab.models.LeNet5", "LeNet5"))
)
def test_models_that_cannot_be_cut_are_refused_in_one_line(target: str, name: str) -> None:
    with pytest.raises(PruneConfigError) as err:
        check_sliceable({"_target_": target})
    message = str(err.value)
    assert "\n" not in message and name in message and "structured=false" in message
    if name == "ResNet":
        assert "residual" in message
