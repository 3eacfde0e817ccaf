"""Magnitude and channel selection: the sparsity asked for is the sparsity reached, on
hand-written and built-in layers alike, and masks come back after a restart from baked weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.models import VGG, SeedCNN
from cnnlab.prune import masks as M
from cnnlab.prune.options import PruneConfigError, check_amount, check_choice, check_layers

AMOUNTS = (0.3, 0.5, 0.7, 0.9)


def seed_cnn(impl: str = "builtin", seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return SeedCNN(impl=impl, in_shape=(1, 8, 8), num_classes=10, **kwargs)


def weights(model: nn.Module, structured: bool = False) -> list[nn.Module]:
    return [m for _, m in M.prunable_layers(model, ("conv", "linear"), structured)]


@pytest.mark.parametrize("amount", AMOUNTS)
def test_per_layer_unstructured_reaches_the_amount_in_every_layer(amount: float) -> None:
    model = seed_cnn()
    M.prune_model(model, amount, "unstructured", "layer")
    for m in weights(model):
        n = m.weight.numel()
        assert int((m.weight == 0).sum()) == round(amount * n)
        # the survivors are the largest magnitudes: every zeroed |w| <= every kept |w|
        orig = m.weight_orig.detach().abs()
        dropped, kept = orig[m.weight_mask == 0], orig[m.weight_mask == 1]
        assert dropped.max() <= kept.min()


@pytest.mark.parametrize("amount", AMOUNTS)
def test_global_unstructured_reaches_the_amount_over_all_layers(amount: float) -> None:
    model = seed_cnn()
    M.prune_model(model, amount, "unstructured", "global")
    modules = weights(model)
    reached = M.weight_sparsity(modules)
    assert reached.zeros == round(amount * reached.total)
    per_layer = [float((m.weight == 0).float().mean()) for m in modules]
    assert max(per_layer) - min(per_layer) > 0.05  # ranked together, not layer by layer
    orig = torch.cat([m.weight_orig.detach().abs().flatten() for m in modules])
    mask = torch.cat([m.weight_mask.flatten() for m in modules])
    assert orig[mask == 0].max() <= orig[mask == 1].min()


@pytest.mark.parametrize("amount", (0.25, 0.5, 0.75))
def test_structured_zeroes_whole_channels_with_their_bias_and_batch_norm(amount: float) -> None:
    model = seed_cnn(batch_norm=True, channels=(8, 16, 16), hidden=32)
    with torch.no_grad():  # a BN shift that is not zero: a dropped channel must still be silent
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.uniform_(0.5, 1.0)
    kept = M.prune_model(model, amount, "structured", "layer")
    bns = M.following_batchnorm(model)
    modules = weights(model, structured=True)
    assert model.classifier.fc2 not in modules  # the classes are never cut
    for m in modules:
        channels = m.weight.shape[0]
        dead = (m.weight.flatten(1) == 0).all(dim=1)
        assert int(dead.sum()) == round(amount * channels) == channels - len(kept[m])
        scores = m.weight_orig.detach().abs().flatten(1).sum(dim=1)
        assert scores[dead].max() <= scores[~dead].min()  # the lowest-L1 channels went
        if m in bns:
            assert (bns[m].weight[dead] == 0).all() and (bns[m].bias[dead] == 0).all()
        if m.bias is not None:
            assert (m.bias[dead] == 0).all()


def test_global_structured_drops_the_amount_of_all_channels() -> None:
    model = seed_cnn(channels=(8, 16, 16), hidden=32)
    kept = M.prune_model(model, 0.5, "structured", "global")
    total = sum(m.weight.shape[0] for m in kept)
    assert total - sum(len(k) for k in kept.values()) == round(0.5 * total)
    assert all(len(k) >= 1 for k in kept.values())


@pytest.mark.parametrize("method", ("unstructured", "structured"))
@pytest.mark.parametrize("scope", ("layer", "global"))
def test_hand_written_and_builtin_layers_give_the_same_pruned_weights(method, scope) -> None:
    custom = seed_cnn("custom", batch_norm=True)
    builtin = seed_cnn("builtin", seed=1, batch_norm=True)
    builtin.load_state_dict(custom.state_dict())
    for model in (custom, builtin):
        M.prune_model(model, 0.6, method, scope)
        M.bake(model)
    a, b = custom.state_dict(), builtin.state_dict()
    assert a.keys() == b.keys() == seed_cnn(batch_norm=True).state_dict().keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert M.weight_sparsity(weights(custom)).zeros > 0
    x = torch.randn(4, 1, 8, 8)
    custom.eval(), builtin.eval()
    torch.testing.assert_close(custom(x), builtin(x))


def test_a_restart_from_baked_weights_finds_the_same_masks() -> None:
    """What a resumed run sees: the checkpoint holds weight = orig * mask, no mask."""
    model = seed_cnn()
    M.prune_model(model, 0.4, "unstructured", "global")
    masks = {id(m): m.weight_mask.clone() for m in weights(model)}
    baked = M.baked_state_dict(model.state_dict())
    assert not any(k.endswith(("_orig", "_mask")) for k in baked)
    restarted = seed_cnn(seed=3)
    restarted.load_state_dict(baked)
    M.prune_model(restarted, 0.4, "unstructured", "global")
    for before, after in zip(weights(model), weights(restarted), strict=True):
        assert torch.equal(masks[id(before)], after.weight_mask)


def test_a_later_larger_amount_keeps_what_was_pruned_and_reaches_the_total() -> None:
    model = seed_cnn()
    M.prune_model(model, 0.3, "unstructured", "layer")
    first = {id(m): m.weight_mask.clone() for m in weights(model)}
    M.prune_model(model, 0.6, "unstructured", "layer")
    for m in weights(model):
        assert (m.weight_mask[first[id(m)] == 0] == 0).all()
        assert int((m.weight == 0).sum()) == round(0.6 * m.weight.numel())


def test_masked_weights_get_no_update_while_training() -> None:
    model = seed_cnn("custom")
    M.prune_model(model, 0.5, "unstructured", "layer")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(8, 1, 8, 8)), torch.arange(8)).backward()
        optimizer.step()
    M.bake(model)
    assert M.weight_sparsity(weights(model)).fraction == pytest.approx(0.5, abs=1e-3)


def test_vgg_pairs_every_conv_with_its_batch_norm() -> None:
    model = VGG(impl="custom", in_shape=(1, 8, 8), cfg=(8, "M", 16))
    pairs = M.following_batchnorm(model)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert set(pairs) == set(convs) and all(isinstance(b, nn.BatchNorm2d) for b in pairs.values())


@pytest.mark.parametrize("bad", (1.0, 1.5, -0.1, float("nan"), "half", True))
def test_an_amount_outside_0_1_is_one_line(bad) -> None:
    with pytest.raises(PruneConfigError) as err:
        check_amount(bad)
    assert "\n" not in str(err.value) and "[0, 1)" in str(err.value)


def test_unknown_method_scope_and_layers_are_one_line() -> None:
    with pytest.raises(PruneConfigError, match=r"method='magic' is not known: use one of"):
        check_choice("magic", ("unstructured", "structured"), "method")
    with pytest.raises(PruneConfigError, match=r"layers=\['attention'\]"):
        check_layers(["attention"])
