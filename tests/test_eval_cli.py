"""cnnlab-eval rebuilds a run from its checkpoint alone and reproduces its test metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cnnlab.eval import run_config

QUICK = (
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "viz.enabled=false",
)


def test_only_command_line_keys_replace_the_trained_config(compose_config) -> None:
    trained = compose_config("optimizer=sgd", "data.batch_size=32", "trainer.max_epochs=3")
    overrides = ["ckpt_path=x.ckpt", "data.batch_size=256", "trainer=cpu"]
    cfg = compose_config(*overrides, config_name="eval")
    merged = run_config(
        cfg, OmegaConf.create(OmegaConf.to_container(trained, resolve=True)), overrides
    )
    assert merged.data.batch_size == 256
    assert merged.optimizer._target_ == "torch.optim.SGD"  # from the run, not eval's default adam
    assert merged.trainer.accelerator == "cpu" and merged.trainer.max_epochs == 10  # whole group
    assert merged.task_name == "eval" and merged.ckpt_path == "x.ckpt"
    assert merged.paths.output_dir == cfg.paths.output_dir


def test_missing_checkpoint_is_explained(compose_config, tmp_path: Path) -> None:
    from cnnlab.eval import evaluate
    from cnnlab.training.builders import CheckpointError

    cfg = compose_config(f"ckpt_path={tmp_path / 'nowhere'}", config_name="eval")
    with pytest.raises(CheckpointError, match=r"does not exist.*best\.ckpt"):
        evaluate(cfg)


@pytest.mark.slow
def test_eval_reproduces_the_training_test_metrics(run_cli, tmp_path: Path) -> None:
    trained = run_cli("cnnlab.train", "model.impl=builtin", *QUICK, "hydra.run.dir=outputs/run")
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_dir = tmp_path / "outputs" / "run"
    evaluated = run_cli(
        "cnnlab.eval",
        f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}",
        "data.batch_size=128",
        "hydra.run.dir=outputs/eval",
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    train_record = json.loads((run_dir / "metrics.json").read_text())
    eval_record = json.loads((tmp_path / "outputs/eval/metrics.json").read_text())
    assert eval_record["status"] == "ok" and eval_record["impl"] == "builtin"
    for key in ("test/acc", "test/f1", "test/precision", "test/recall", "confusion_matrix"):
        assert eval_record[key] == train_record[key], key
    assert eval_record["test/loss"] == pytest.approx(train_record["test/loss"], rel=1e-5)
    assert "Run folder:" in evaluated.stdout + evaluated.stderr


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_eval_viz_and_report_leave_the_training_run_byte_identical(run_cli, tmp_path) -> None:
    trained = run_cli(
        "cnnlab.train",
        "model.impl=builtin",
        "logger=[csv,tensorboard]",
        *QUICK,
        "hydra.run.dir=outputs/run",
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_dir = tmp_path / "outputs" / "run"
    before = _snapshot(run_dir)
    assert "csv/metrics.csv" in before and any(k.startswith("tensorboard/") for k in before)

    for command in (
        ("cnnlab.eval", f"ckpt_path={run_dir}"),  # the run folder: its best.ckpt
        ("cnnlab.viz.cli", f"run_dir={run_dir}", "viz.gradcam=false"),
        ("cnnlab.report", str(run_dir)),
    ):
        result = run_cli(*command)
        assert result.returncode == 0, result.stderr[-3000:]
    assert _snapshot(run_dir) == before

    (eval_dir,) = (tmp_path / "outputs" / "eval" / "runs").iterdir()
    assert json.loads((eval_dir / "metrics.json").read_text())["status"] == "ok"
    eval_csv = (eval_dir / "csv" / "metrics.csv").read_text()
    assert "test/acc" in eval_csv and "train/loss" not in eval_csv  # its own log, not the run's
    (viz_dir,) = (tmp_path / "outputs" / "viz" / "runs").iterdir()
    assert {"training_curves.png", "filters.png"} <= {p.name for p in viz_dir.iterdir()}
    (report_dir,) = (tmp_path / "outputs" / "report").iterdir()
    assert "| builtin |" in (report_dir / "report.md").read_text()
