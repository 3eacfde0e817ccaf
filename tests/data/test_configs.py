"""Every conf/data/*.yaml instantiates its module and exposes the contract's metadata at once,
with no dataset files present (nothing is downloaded or decoded at construction)."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cnnlab.data import ImageClassificationDataModule
from cnnlab.paths import CONF_DIR

# _base.yaml is what every data config pulls in first, not a dataset
DATA_CONFIGS = sorted(
    p.stem for p in (Path(CONF_DIR) / "data").glob("*.yaml") if not p.stem.startswith("_")
)


def _compose_data(*overrides: str) -> dict:
    """``data`` of train.yaml composed as the CLI does, unresolved (``${paths.data_dir}`` kept)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg.data, resolve=False)


def _compose(name: str, tmp_path: Path, **overrides):
    data = OmegaConf.merge(_compose_data(f"data={name}"), overrides)
    # the spine's paths.data_dir, as train.yaml composes it
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path)}, "data": data})
    return instantiate(cfg.data)


def test_all_five_datasets_have_configs():
    assert DATA_CONFIGS == ["cifar10", "digits", "fashion_mnist", "imagefolder", "mnist"]


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_config_builds_module_with_metadata(name, tmp_path, write_image_folder):
    overrides = {}
    if name == "imagefolder":
        overrides["root"] = str(write_image_folder(tmp_path / "pets", {"train": 2, "test": 1}))
    dm = _compose(name, tmp_path, **overrides)
    assert isinstance(dm, ImageClassificationDataModule)
    assert dm.data_dir == tmp_path.resolve()
    channels, height, width = dm.input_shape
    assert channels in (1, 3) and height > 0 and width > 0
    assert len(dm.class_names) == dm.num_classes
    assert len(dm.mean) == len(dm.std) == channels
    assert sorted(p.name for p in tmp_path.iterdir()) == (["pets"] if overrides else [])


def test_digits_config_trains_offline(tmp_path):
    dm = _compose("digits", tmp_path, augment={"hflip": True})
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (64, 1, 8, 8) and images.dtype == torch.float32
    assert labels.dtype == torch.int64


#: what every data config composed to before the shared keys moved into conf/data/_base.yaml
SHARED_BEFORE = {
    "data_dir": "${paths.data_dir}",
    "batch_size": 64,
    "num_workers": None,
    "pin_memory": None,
    "persistent_workers": True,
    "val_fraction": 0.1,
    "split_seed": 42,
    "normalize": True,
    "augment": {"random_crop_padding": 0, "hflip": False, "rotation": 0},
    "limit_train_samples": None,
}
OWN_BEFORE = {
    "cifar10": {"_target_": "cnnlab.data.CIFAR10DataModule", "download": True},
    "digits": {"_target_": "cnnlab.data.DigitsDataModule", "test_fraction": 0.2},
    "fashion_mnist": {"_target_": "cnnlab.data.FashionMNISTDataModule", "download": True},
    "mnist": {"_target_": "cnnlab.data.MNISTDataModule", "download": True},
    "imagefolder": {
        "_target_": "cnnlab.data.ImageFolderDataModule",
        "root": "???",
        "image_size": None,
        "channels": None,
        "in_memory": True,
        "mean": None,
        "std": None,
    },
}
#: the recipe keys added with the base config, all off
NEW_AUGMENT = {
    "randaugment": {"enabled": False, "num_ops": 2, "magnitude": 9, "num_magnitude_bins": 31},
    "trivialaugment": {"enabled": False, "num_magnitude_bins": 31},
    "random_erasing": {"p": 0.0, "scale": [0.02, 0.33], "ratio": [0.3, 3.3], "value": 0},
}
NEW_TOP = {
    "mixup": {"alpha": 0.0, "prob": 1.0, "switch_prob": 0.5},
    "cutmix": {"alpha": 0.0},
    "drop_last": False,
}


def _before_plus_new(name: str) -> dict:
    expected = {**SHARED_BEFORE, **OWN_BEFORE[name], **NEW_TOP}
    expected["augment"] = {**SHARED_BEFORE["augment"], **NEW_AUGMENT}
    return expected


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_data_config_composes_to_the_values_it_had_before_the_base_config(name):
    assert _compose_data(f"data={name}") == _before_plus_new(name)


def test_experiment_and_cli_overrides_still_reach_the_shared_keys():
    data = _compose_data(
        "experiment=seed_cifar10", "data.batch_size=32", "data.augment.hflip=true",
        "data.mixup.alpha=0.2",
    )  # fmt: skip
    expected = _before_plus_new("cifar10")
    expected.update(batch_size=32, normalize=False, mixup={**NEW_TOP["mixup"], "alpha": 0.2})
    expected["augment"]["hflip"] = True
    assert data == expected
