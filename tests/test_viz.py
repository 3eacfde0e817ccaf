"""Plots of a real (tiny) training run: every file renders, attributions agree across impls,
and bad input ends in a readable message instead of a traceback."""

from __future__ import annotations

import copy
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from cnnlab.data.digits import DigitsDataModule
from cnnlab.layers import convert
from cnnlab.models import SeedCNN
from cnnlab.paths import CONF_DIR
from cnnlab.training.builders import load_run
from cnnlab.viz import PLOTS, render_run
from cnnlab.viz.attribution import grad_cam, saliency
from cnnlab.viz.cli import main as viz_main
from training_helpers import train_in_process

SMALL = ("model.channels=[8,16,16]", "model.hidden=32")
EXPECTED = {
    "training_curves.png",
    "confusion_matrix.png",
    "per_class_metrics.png",
    "filters.png",
    "feature_maps_stage1.png",
    "saliency.png",
    "gradcam.png",
    "misclassified.png",
}


def train_run(out_dir: Path, *overrides: str) -> Path:
    """A real cnnlab-train run (in-process, CPU, two short epochs) into ``out_dir``."""
    return train_in_process(out_dir, *overrides)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train_run(
        tmp_path_factory.mktemp("viz") / "run",
        *SMALL,
        "trainer=cpu",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=6",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "viz.enabled=false",
    )


def viz_defaults() -> dict:
    return OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "viz" / "default.yaml"))


def assert_real_png(path: Path) -> None:
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=float)
    assert pixels.std() > 0, f"{path.name} is blank"


def test_render_run_writes_every_plot(run_dir: Path) -> None:
    _, module, datamodule = load_run(run_dir)
    written = render_run(run_dir, viz_defaults(), module=module, datamodule=datamodule)
    names = {p.name for p in written}
    assert names >= EXPECTED | {"per_class_metrics.csv", "per_class_metrics.md"}
    for path in written:
        if path.suffix == ".png":
            assert_real_png(path)
    table = (run_dir / "viz" / "per_class_metrics.md").read_text()
    assert all(f"| {digit} |" in table for digit in range(10))


def test_plots_go_to_tensorboard_when_the_run_logs_there(tmp_path) -> None:
    run = train_run(
        tmp_path / "tb_run",
        *SMALL,
        "logger=[csv,tensorboard]",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.enable_progress_bar=false",
        *(f"viz.{name}=false" for name in PLOTS if name not in ("curves", "filters")),
    )
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert {"viz/training_curves", "viz/filters"} <= set(events.Tags()["images"])


def test_cli_renders_from_checkpoint_and_honours_switches(run_dir, monkeypatch, tmp_path) -> None:
    out_run = tmp_path / "copy"
    (out_run / "checkpoints").mkdir(parents=True)
    ckpt = out_run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes((run_dir / "checkpoints" / "last.ckpt").read_bytes())
    off = [f"viz.{name}=false" for name in PLOTS if name not in ("saliency", "curves")]
    plots = tmp_path / "plots"
    monkeypatch.setattr(sys, "argv", ["cnnlab-viz", f"ckpt_path={ckpt}", f"out={plots}", *off])
    viz_main()
    # a bare checkpoint has no csv log: curves are skipped, not an error
    assert [p.name for p in plots.iterdir()] == ["saliency.png"]
    assert [p.name for p in out_run.iterdir()] == ["checkpoints"]  # the run folder is untouched


def test_cli_writes_into_its_own_run_folder(run_dir, monkeypatch, tmp_path) -> None:
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    monkeypatch.chdir(tmp_path)
    off = [f"viz.{name}=false" for name in PLOTS if name != "filters"]
    monkeypatch.setattr(sys, "argv", ["cnnlab-viz", f"run_dir={run_dir}", *off])
    viz_main()
    (own,) = (tmp_path / "outputs" / "viz" / "runs").iterdir()
    assert [p.name for p in own.iterdir()] == ["filters.png"]
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_cli_takes_a_run_folder_as_ckpt_path_like_eval(run_dir, monkeypatch, tmp_path) -> None:
    off = [f"viz.{name}=false" for name in PLOTS if name != "curves"]
    plots = tmp_path / "plots"
    monkeypatch.setattr(sys, "argv", ["cnnlab-viz", f"ckpt_path={run_dir}", f"out={plots}", *off])
    viz_main()
    assert [p.name for p in plots.iterdir()] == ["training_curves.png"]  # the run's csv log


def test_cli_rejects_a_folder_that_is_not_a_run(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cnnlab-viz", f"run_dir={tmp_path}"])
    with pytest.raises(SystemExit, match="not a cnnlab-train run folder"):
        viz_main()


def test_cli_explains_a_checkpoint_of_another_model(run_dir, tmp_path, monkeypatch) -> None:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["cnnlab_config"]["model"]["hidden"] = 64  # the stored weights have 32 units
    torch.save(checkpoint, tmp_path / "other.ckpt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cnnlab-viz", f"ckpt_path={tmp_path / 'other.ckpt'}"])
    with pytest.raises(SystemExit, match="does not fit the model"):
        viz_main()


def test_model_without_convs_skips_conv_plots(run_dir, tmp_path, caplog) -> None:
    _, module, datamodule = load_run(run_dir)
    module.model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    switches = {**viz_defaults(), "confusion": False, "misclassified": False}
    with caplog.at_level(logging.WARNING):
        written = render_run(tmp_path, switches, module=module, datamodule=datamodule)
    assert [p.name for p in written] == ["saliency.png"]  # needs no conv layer
    for plot in ("filters", "feature maps", "gradcam"):
        assert f"skipped {plot}: Sequential has no Conv2d layers" in caplog.text
    assert "skipped curves" in caplog.text  # tmp_path has no csv/metrics.csv


def test_attributions_through_custom_backward_match_builtin() -> None:
    torch.manual_seed(0)
    custom = SeedCNN("custom", in_shape=(1, 8, 8), num_classes=10, channels=(8, 16, 16), hidden=32)
    builtin = convert(copy.deepcopy(custom), to="builtin")
    datamodule = DigitsDataModule(batch_size=6)
    datamodule.setup("test")
    images, _ = next(iter(datamodule.test_dataloader()))
    for explain in (saliency, grad_cam):
        ours, theirs = explain(custom, images), explain(builtin, images)
        assert ours.abs().max() > 0
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
