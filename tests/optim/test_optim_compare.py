"""``cnnlab-compare mode=optim``: custom and torch.optim optimizers trained from the same weights,
curves overlaid, their largest difference reported (0 in float64: the same arithmetic)."""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cnnlab.compare.optimizers as optimizers
from cnnlab.compare import main as compare_main

SMALL = ("model.channels=[8,16,16]", "model.hidden=32", "parity.max_batches=4")


def _compare(tmp_path: Path, monkeypatch, *overrides: str) -> str:
    argv = ["cnnlab-compare", "mode=optim", *SMALL, *overrides, f"hydra.run.dir={tmp_path}"]
    monkeypatch.setattr(sys, "argv", argv)
    compare_main()
    return (tmp_path / "report.md").read_text()


def _max_diff(report: str) -> float:
    return float(re.search(r"max \|θ_custom - θ_builtin\| = (\S+?)\.(\s|$)", report).group(1))


@pytest.mark.parametrize(
    "optimizer", ["gd", "nesterov", "rmsprop +optimizer.centered=true", "adamw"]
)
def test_optimizer_parity_report(tmp_path: Path, monkeypatch, optimizer: str) -> None:
    name, *extra = optimizer.split()
    report = _compare(
        tmp_path, monkeypatch, f"optimizer={name}", *extra, "dtype=float64", "parity.epochs=2"
    )
    assert "by hand (cnnlab.optim) vs torch.optim" in report and "Training parity" in report
    assert _max_diff(report) <= 1e-12
    assert "largest difference 0" in report or "never differ" in report
    with (tmp_path / "parity.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["impl"] for r in rows} == {"custom", "builtin"} and len(rows) == 4
    custom, builtin = ([r for r in rows if r["impl"] == i][-1] for i in ("custom", "builtin"))
    assert float(custom["train_loss"]) == pytest.approx(float(builtin["train_loss"]), rel=1e-12)
    with Image.open(tmp_path / "parity.png") as image:
        assert np.asarray(image.convert("RGB"), dtype=float).std() > 0


def test_a_different_update_shows_up(tmp_path: Path, monkeypatch) -> None:
    """The comparison can fail: a custom side with another learning rate parts visibly."""
    build = optimizers.build_optimizer

    def off_by_a_bit(config, impl, model):
        return build(
            {**config, "lr": config["lr"] * 1.5} if impl == "custom" else config, impl, model
        )

    monkeypatch.setattr(optimizers, "build_optimizer", off_by_a_bit)
    report = _compare(tmp_path, monkeypatch, "optimizer=adam", "parity.epochs=1")
    assert _max_diff(report) > 1e-6
    assert "first differ by more than" in report
