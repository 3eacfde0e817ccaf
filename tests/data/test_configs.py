"""Every conf/data/*.yaml instantiates its module and exposes the contract's metadata at once,
with no dataset files present (nothing is downloaded or decoded at construction)."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cnnlab.data import ImageClassificationDataModule
from cnnlab.paths import CONF_DIR

DATA_CONFIGS = sorted(p.stem for p in (Path(CONF_DIR) / "data").glob("*.yaml"))


def _compose(name: str, tmp_path: Path, **overrides):
    data = OmegaConf.merge(OmegaConf.load(Path(CONF_DIR) / "data" / f"{name}.yaml"), overrides)
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
