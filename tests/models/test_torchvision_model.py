"""``model=torchvision``: any torchvision classifier, sized for the data, custom or built-in.

The custom model must be the built-in one with hand-written layers: same weights give the same
logits and every gradient (float64); 1-channel 8x8 digits run through every model the issue
names; checkpoints rebuild through the safe loader; and a custom ResNet-18 learns digits.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from torchvision.models.resnet import ResNet

import cnnlab.layers as L
from cnnlab.data import DigitsDataModule
from cnnlab.layers import convert
from cnnlab.models import TorchvisionModel
from cnnlab.models.torchvision import builtin_leftovers
from cnnlab.training.builders import build_datamodule, build_module, load_run, plain

DIGITS = (1, 8, 8)
#: the models the issue names; each must run on the digits default
REQUIRED = (
    "resnet18",
    "vgg11_bn",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "densenet121",
    "efficientnet_b0",
    "convnext_tiny",
)


def _build(name: str, impl: str, in_shape=DIGITS, **kwargs) -> TorchvisionModel:
    torch.manual_seed(0)
    return TorchvisionModel(impl=impl, in_shape=in_shape, num_classes=10, name=name, **kwargs)


def _step(model: nn.Module, x: torch.Tensor, upstream: torch.Tensor):
    """Logits, input gradient and every parameter gradient of one train-mode step."""
    model.zero_grad(set_to_none=True)
    leaf = x.clone().requires_grad_()
    torch.manual_seed(1)  # the same dropout / stochastic-depth draws
    out = model(leaf)
    out.backward(upstream)
    return out.detach(), leaf.grad, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_custom_matches_builtin_in_float64_with_the_same_weights(name: str) -> None:
    builtin = _build(name, "builtin").double().train()
    custom = _build(name, "custom").double().train()
    custom.load_state_dict(builtin.state_dict())
    assert not builtin_leftovers(custom), builtin_leftovers(custom)
    assert builtin_leftovers(builtin)  # the built-in family really is built-in
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(8, *DIGITS, dtype=torch.float64, generator=gen)
    upstream = torch.randn(8, 10, dtype=torch.float64, generator=gen)

    out_b, gx_b, grads_b = _step(builtin, x, upstream)
    out_c, gx_c, grads_c = _step(custom, x, upstream)
    torch.testing.assert_close(out_c, out_b, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(gx_c, gx_b, rtol=1e-8, atol=1e-10 * gx_b.abs().max().item())
    assert grads_c.keys() == grads_b.keys() and len(grads_b) > 50
    scale = max(g.abs().max().item() for g in grads_b.values())
    for key, want in grads_b.items():
        assert want is not None and grads_c[key] is not None, key
        torch.testing.assert_close(grads_c[key], want, rtol=1e-8, atol=1e-10 * scale, msg=key)
    for key, want in builtin.state_dict().items():  # running statistics
        torch.testing.assert_close(custom.state_dict()[key], want, rtol=1e-8, atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("name", REQUIRED)
def test_required_models_run_fully_custom_on_digits(name: str) -> None:
    model = _build(name, "custom").train()
    assert not builtin_leftovers(model), f"{name}: {builtin_leftovers(model)}"
    x = torch.randn(4, *DIGITS)
    logits = model(x)
    assert logits.shape == (4, 10)
    logits.square().sum().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())


def test_small_stem_for_resnet_and_a_first_conv_for_one_channel() -> None:
    small = _build("resnet18", "custom")  # auto: 8x8 is small
    assert isinstance(small.net, ResNet)
    conv1 = small.net.conv1
    assert (conv1.in_channels, conv1.kernel_size, conv1.stride) == (1, (3, 3), (1, 1))
    assert isinstance(small.net.maxpool, nn.Identity)
    imagenet = _build("resnet18", "builtin", in_shape=(3, 64, 64))  # auto: 64x64 is not small
    assert imagenet.net.conv1.kernel_size == (7, 7) and imagenet.net.conv1.stride == (2, 2)
    assert isinstance(imagenet.net.maxpool, nn.MaxPool2d)
    forced = _build("resnet18", "builtin", in_shape=(3, 64, 64), small_stem=True)
    assert forced.net.conv1.stride == (1, 1)
    assert forced(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_vgg_on_8x8_drops_just_enough_pools() -> None:
    model = _build("vgg11_bn", "builtin")
    pools = [m for m in model.net.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3  # of five: 8 -> 4 -> 2 -> 1
    assert model(torch.randn(2, *DIGITS)).shape == (2, 10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "resnet1"}, r"model.name='resnet1' is not a torchvision .*: alexnet, .*resnet18"),
        ({"name": "vit_b_16", "small_stem": True}, r"vit_b_16 cuts images into patches"),
        ({"name": "vit_b_16"}, r"vit_b_16 cannot be built for 8x8 images"),
        ({"name": "resnet18", "small_stem": "yes"}, r"small_stem must be auto, true or false"),
        ({"name": "squeezenet1_0", "small_stem": False}, r"squeezenet1_0 does not run on 8x8"),
    ],
)
def test_user_mistakes_are_one_line_errors(kwargs: dict, message: str) -> None:
    kwargs = {"in_shape": DIGITS, **kwargs}
    with pytest.raises(ValueError, match=message) as error:
        TorchvisionModel(impl="custom", num_classes=10, **kwargs)
    assert "\n" not in str(error.value)


def test_checkpoint_rebuilds_through_the_safe_loader_and_converts_both_ways(
    compose_config, tmp_path
) -> None:
    cfg = compose_config("model=torchvision", "model.name=mobilenet_v3_small")
    module = build_module(cfg, build_datamodule(cfg))
    path = tmp_path / "tv.ckpt"
    torch.save({"state_dict": module.state_dict(), "cnnlab_config": plain(cfg)}, path)

    _, loaded, _ = load_run(path)  # safe_config check, rebuild, load_state_dict
    assert loaded.state_dict().keys() == module.state_dict().keys()
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(3, *DIGITS)
    with torch.no_grad():
        want = loaded.eval()(x)
        net = copy.deepcopy(loaded.model)
        builtin = convert(net, to="builtin")
        assert not any(type(m).__module__.startswith("cnnlab.layers") for m in builtin.modules())
        torch.testing.assert_close(builtin(x), want, rtol=1e-5, atol=1e-6)
        back = convert(builtin, to="custom")
        assert not builtin_leftovers(back)
        torch.testing.assert_close(back(x), want, rtol=0, atol=0)


@pytest.mark.slow
def test_custom_resnet18_learns_digits() -> None:
    """Adam takes a custom ResNet-18 from chance to fitting a batch of real digits in a few steps
    (the whole-run learning on digits is the CLI's job; this is the fast proof that gradients
    through every hand-written layer of the torchvision model are the ones that train it)."""
    torch.manual_seed(0)
    data = DigitsDataModule(batch_size=48, num_workers=0)
    data.setup("fit")
    x, y = next(iter(data.train_dataloader()))
    model = _build("resnet18", "custom").train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = L.CrossEntropyLoss()
    losses = []
    for _ in range(12):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert losses[-1] < 0.2 * losses[0], losses
    assert accuracy > 0.9, f"batch accuracy {accuracy:.2f} after 12 steps; losses {losses}"
