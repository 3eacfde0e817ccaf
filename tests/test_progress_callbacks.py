"""Progress bar and model summary by terminal, and the callbacks= presets (EMA, lr monitor)."""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelSummary,
    RichModelSummary,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.callbacks.progress import ProgressBar

from cnnlab.training import progress
from cnnlab.training.averaging import EMAWeightAveraging
from cnnlab.training.builders import (
    build_callbacks,
    build_datamodule,
    build_module,
    plain,
    progress_callbacks,
)
from cnnlab.training.safe_config import check_config
from training_helpers import train_in_process


@pytest.mark.parametrize("terminal", [True, False])
def test_rich_in_a_terminal_plain_text_in_a_log(compose_config, monkeypatch, terminal) -> None:
    monkeypatch.setattr(progress, "stdout_is_terminal", lambda: terminal)
    cfg = compose_config()
    callbacks = build_callbacks(cfg)
    (bar,) = [c for c in callbacks if isinstance(c, ProgressBar)]
    (summary,) = [c for c in callbacks if isinstance(c, ModelSummary)]
    if terminal:
        assert type(bar) is RichProgressBar and type(summary) is RichModelSummary
        assert bar.refresh_rate == 1
    else:
        assert type(bar) is TQDMProgressBar and type(summary) is ModelSummary
        assert bar.refresh_rate == 50
    # the stored config names the class that was used, and a checkpoint of it loads
    stored = plain(cfg)
    assert stored["callbacks"]["progress_bar"]["_target_"].endswith(type(bar).__name__)
    check_config(stored, "test")


def test_the_trainer_switches_win_over_the_callbacks(compose_config) -> None:
    cfg = compose_config("trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false")
    callbacks = build_callbacks(cfg)
    assert not [c for c in callbacks if isinstance(c, (ProgressBar, ModelSummary))]
    assert len(callbacks) == len(build_callbacks(compose_config())) - 2


@pytest.mark.parametrize("command", ["eval", "prune"])
def test_eval_and_prune_draw_the_bar_training_draws(compose_config, monkeypatch, command) -> None:
    """Not Lightning's default (Rich) bar, which writes bar glyphs into a log."""
    monkeypatch.setattr(progress, "stdout_is_terminal", lambda: False)
    cfg = compose_config("ckpt_path=x", config_name=command)
    (bar,) = progress_callbacks(cfg)
    assert type(bar) is TQDMProgressBar and bar.refresh_rate == 50
    assert progress_callbacks(compose_config("trainer.enable_progress_bar=false")) == []


def test_presets_compose_onto_the_defaults(compose_config) -> None:
    cfg = compose_config("callbacks=[early_stopping,ema,lr_monitor]", "callbacks.ema.decay=0.5")
    callbacks = build_callbacks(cfg)
    kinds = {type(c) for c in callbacks}
    assert {EarlyStopping, EMAWeightAveraging, LearningRateMonitor} <= kinds
    assert len(callbacks) == len(build_callbacks(compose_config())) + 2
    (monitor,) = [c for c in callbacks if isinstance(c, LearningRateMonitor)]
    assert monitor.logging_interval == "step" and monitor.log_momentum
    (ema,) = [c for c in callbacks if isinstance(c, EMAWeightAveraging)]
    assert ema._kwargs["avg_fn"] is not None and cfg.callbacks.ema.decay == 0.5
    check_config(plain(cfg), "test")  # a checkpoint of such a run still loads


@pytest.mark.slow
def test_ema_checkpoints_hold_the_averaged_weights_and_test_them(tmp_path) -> None:
    run = train_in_process(
        tmp_path / "run",
        "callbacks=ema",
        "callbacks.ema.decay=0.9",
        "trainer.max_epochs=2",
        "model.channels=[8,16,16]",
        "model.hidden=32",
        "viz.enabled=false",
    )
    metrics = json.loads((run / "metrics.json").read_text())
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    averaged, raw = best["state_dict"], best["current_model_state"]
    assert averaged.keys() == raw.keys()
    assert int(best["averaging_state"]["n_averaged"]) == best["global_step"]  # every step
    weights = [k for k in averaged if k.endswith("weight")]
    assert all(not torch.equal(averaged[k], raw[k]) for k in weights)

    # the final test scored the averaged weights, not the raw ones
    cfg = best["cnnlab_config"]
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(cfg)
    datamodule = build_datamodule(cfg)
    datamodule.setup("test")

    def test_accuracy(state: dict[str, torch.Tensor]) -> float:
        module = build_module(cfg, datamodule)
        module.load_state_dict(state)
        module.eval()
        right = total = 0
        with torch.no_grad():
            for images, labels in datamodule.test_dataloader():
                right += int((module(images).argmax(1) == labels).sum())
                total += len(labels)
        return right / total

    assert metrics["test/acc"] == pytest.approx(test_accuracy(averaged), abs=1e-6)
    assert test_accuracy(raw) != pytest.approx(test_accuracy(averaged), abs=1e-6)
