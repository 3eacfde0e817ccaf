"""cnnlab checkpoints written without training, for tests of what loading them does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from cnnlab.training.builders import build_datamodule, build_module, plain

#: a narrow builtin seed_cnn: its checkpoint is built in a second
SMALL = ("model.channels=[4,8,8]", "model.hidden=16", "model.impl=builtin")


def write_checkpoint(
    compose_config: Callable, path: Path, *overrides: str, edit: Callable | None = None
) -> Path:
    """A checkpoint with fresh weights and the stored config a run would have; ``edit`` changes
    that config the way a hostile or careless sender would."""
    cfg = compose_config(*SMALL, *overrides)
    module = build_module(cfg, build_datamodule(cfg))
    config = plain(cfg)
    if edit is not None:
        edit(config)
    torch.save({"state_dict": module.state_dict(), "cnnlab_config": config}, path)
    return path


def plant_writer(victim: Path) -> Callable[[dict], None]:
    """An ``edit`` that hides ``pathlib.Path.write_text(victim)`` among the loggers."""

    def plant(config: dict) -> None:
        config["logger"]["evil"] = {
            "_target_": "pathlib.Path.write_text",
            "self": str(victim),
            "data": "written by a checkpoint",
        }

    return plant
