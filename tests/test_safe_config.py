"""A checkpoint's stored config is data: only allow-listed classes are ever built from it."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch

from checkpoint_helpers import plant_writer, write_checkpoint
from cnnlab.paths import CONF_DIR
from cnnlab.training.builders import (
    CheckpointError,
    load_checkpoint,
    load_run,
    plain,
    read_checkpoint,
)
from cnnlab.training.safe_config import UnsafeConfigError, check_config, target_problem


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "override",
    [
        f"{group}={option}"
        for group in ("data", "model", "optimizer", "scheduler", "loss", "trainer", "logger")
        for option in _options(group)
    ],
)
def test_every_shipped_config_is_allowed(compose_config, override: str) -> None:
    extra = ("data.root=x",) if override == "data=imagefolder" else ()
    check_config(plain(compose_config(override, *extra)), "shipped")  # raises if refused


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("pathlib.Path.write_text", "not on cnnlab's allow-list"),
        ("builtins.exec", "not on cnnlab's allow-list"),
        ("os.system", "not on cnnlab's allow-list"),
        ("cnnlab.training.errors.os.PathLike", "resolves to os.PathLike"),  # via an import
        ("cnnlab.training.errors.os.system", "not a class"),
        ("cnnlab.training.results.write_metrics", "not a class"),
        ("torch.optim.Adam.step", "not a class"),
        ("torch.nn.Linear", "not a Loss class"),
        ("torch.optim.lr_scheduler.Optimizer", "not a LRScheduler class"),
        ("lightning.pytorch.Trainer.fit", "not on cnnlab's allow-list"),
        ("cnnlab.no_such_module.Thing", "cannot be imported"),
        (7, "must be a dotted class path"),
    ],
)
def test_targets_off_the_allow_list_are_refused(target, why: str) -> None:
    problem = target_problem(target)
    assert problem is not None and why in problem


@pytest.mark.parametrize(
    "target",
    [
        "cnnlab.models.SeedCNN",
        "torch.optim.SGD",
        "torch.optim.lr_scheduler.StepLR",
        "torch.nn.CrossEntropyLoss",
        "lightning.pytorch.Trainer",
        "lightning.pytorch.loggers.TensorBoardLogger",
        "lightning.pytorch.callbacks.EarlyStopping",
    ],
)
def test_allowed_targets(target: str) -> None:
    assert target_problem(target) is None


EVIL = {"_target_": "pathlib.Path.write_text", "self": "{file}", "data": "pwned"}


@pytest.mark.parametrize(
    ("where", "plant"),
    [
        ("logger.evil._target_", lambda c, e: c["logger"].update(evil=e)),
        (
            "callbacks.x.patience._target_",
            lambda c, e: c["callbacks"].update(
                x={"_target_": "lightning.pytorch.callbacks.EarlyStopping", "patience": e}
            ),
        ),
        ("optimizer._args_[0]._target_", lambda c, e: c["optimizer"].update(_args_=[e])),
        ("trainer.plugins[1]._target_", lambda c, e: c["trainer"].update(plugins=[1, e])),
        ("model._target_", lambda c, e: c["model"].update(_target_=e["_target_"], _partial_=True)),
    ],
)
def test_nested_targets_are_found(compose_config, where: str, plant) -> None:
    config = plain(compose_config())
    plant(config, copy.deepcopy(EVIL))
    with pytest.raises(UnsafeConfigError, match=re.escape(where) + ".*write_text"):
        check_config(config, "x.ckpt")


def test_interpolations_are_refused(compose_config) -> None:
    config = plain(compose_config())
    config["data"]["data_dir"] = "${oc.env:HOME}"
    with pytest.raises(UnsafeConfigError, match=r"interpolation at data\.data_dir"):
        check_config(config, "x.ckpt")


def test_a_hostile_checkpoint_builds_nothing(compose_config, tmp_path: Path) -> None:
    victim = tmp_path / "written-by-the-checkpoint.txt"
    ckpt = write_checkpoint(compose_config, tmp_path / "evil.ckpt", edit=plant_writer(victim))
    for load in (load_checkpoint, load_run):
        with pytest.raises(
            UnsafeConfigError, match=r"pathlib\.Path\.write_text.*Nothing was built"
        ):
            load(ckpt)
    assert not victim.exists()


def test_a_clean_checkpoint_rebuilds_its_run(compose_config, tmp_path: Path) -> None:
    ckpt = write_checkpoint(compose_config, tmp_path / "ok.ckpt")
    cfg, module, _ = load_run(ckpt)
    assert cfg.model.hidden == 16
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    assert all(torch.equal(module.state_dict()[k], v) for k, v in saved.items())


def test_pickled_objects_are_never_unpickled(tmp_path: Path) -> None:
    ckpt = tmp_path / "objects.ckpt"
    torch.save({"state_dict": {}, "where": Path("/etc")}, ckpt)  # a PosixPath: not plain data
    with pytest.raises(CheckpointError, match=r"pickled Python objects.*weights_only=True"):
        read_checkpoint(ckpt)
