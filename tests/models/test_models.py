"""Every model x impl: shapes on the three input sizes, custom/built-in parity, known sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cnnlab.models import MODELS, VGG, LeNet5, ResNet, SeedCNN

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"
IN_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("impl", ["custom", "builtin"])
@pytest.mark.parametrize("in_shape", IN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shape(name: str, in_shape: tuple[int, int, int], impl: str) -> None:
    model = MODELS[name](impl=impl, in_shape=in_shape, num_classes=7)
    assert model(torch.randn(2, *in_shape)).shape == (2, 7)


@pytest.mark.parametrize("in_shape", [(1, 8, 8), (3, 32, 32)], ids=["8x8", "32x32"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_custom_matches_builtin_with_same_weights(
    name: str, in_shape: tuple[int, int, int]
) -> None:
    builtin = MODELS[name](impl="builtin", in_shape=in_shape, num_classes=10).double()
    custom = MODELS[name](impl="custom", in_shape=in_shape, num_classes=10).double()
    assert list(custom.state_dict()) == list(builtin.state_dict())

    custom.load_state_dict(builtin.state_dict())
    x = torch.randn(3, *in_shape, dtype=torch.float64)
    torch.testing.assert_close(custom.eval()(x), builtin.eval()(x))


def test_seed_cnn_has_the_articles_keras_parameter_count() -> None:
    # model.summary() of the article's Keras model reports 1,147,466 trainable parameters.
    assert n_params(SeedCNN(impl="builtin", in_shape=(3, 32, 32), num_classes=10)) == 1_147_466


def test_resnet20_size_matches_the_paper() -> None:
    # He et al. 2016, Table 6: ResNet-20 has 0.27M parameters (option A shortcuts).
    option_a = ResNet(impl="builtin", depth=20, shortcut="A")
    option_b = ResNet(impl="builtin", depth=20, shortcut="B")
    assert n_params(option_a) == 269_722
    # B adds two 1x1 projections + BN: 16*32 + 2*32 + 32*64 + 2*64.
    assert n_params(option_b) == 269_722 + 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64


def test_lenet5_on_mnist_has_the_classic_size() -> None:
    assert n_params(LeNet5(impl="builtin", in_shape=(1, 28, 28), num_classes=10)) == 61_706


@pytest.mark.parametrize("depth", [21, 2, 0])
def test_resnet_rejects_depths_that_are_not_6n_plus_2(depth: int) -> None:
    with pytest.raises(ValueError, match=r"6n \+ 2.*20, 32, 44, 56"):
        ResNet(impl="builtin", depth=depth)


def test_resnet_depth_sets_the_number_of_blocks() -> None:
    model = ResNet(impl="builtin", depth=32)
    assert [len(stage) for stage in (model.layer1, model.layer2, model.layer3)] == [5, 5, 5]


def test_vgg_skips_pools_once_the_feature_map_is_1x1() -> None:
    cfg = [16, "M", 16, "M", 16, "M", 16, "M", 16, "M"]
    model = VGG(impl="builtin", in_shape=(1, 8, 8), cfg=cfg, batch_norm=False)
    pools = [m for m in model.features if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 3
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_lenet5_average_pooling_variant() -> None:
    model = LeNet5(impl="builtin", in_shape=(1, 8, 8), pool="avg")
    assert isinstance(model.features.pool1, torch.nn.AvgPool2d)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: LeNet5(impl="builtin", pool="median"), "pool must be one of"),
        (lambda: VGG(impl="builtin", cfg=[64, "P"]), "cfg entries must be"),
        (lambda: SeedCNN(impl="builtin", in_shape=(1, 4, 4)), "at least 8x8"),
        (lambda: SeedCNN(impl="builtin", in_shape=None), r"in_shape=\(C, H, W\)"),
        (lambda: ResNet(impl="builtin", shortcut="C"), "shortcut must be one of"),
        (lambda: SeedCNN(impl="keras"), "model.impl must be one of"),
    ],
)
def test_bad_options_raise_helpful_errors(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_config_instantiates_with_shape_from_the_data_module(name: str) -> None:
    """Mirrors ``build_model``: the config omits in_shape/num_classes, the data module fills them."""
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert cfg.impl == "custom"
    assert "in_shape" not in cfg and "num_classes" not in cfg
    model = instantiate(cfg, in_shape=(1, 8, 8), num_classes=10)
    assert isinstance(model, MODELS[name])
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
