"""DDP (2 CPU processes over gloo) from the Hydra CLI: outputs written once, by rank 0, in the
run's or job's own folder -- for a single run and inside a `-m` sweep."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

#: cross-entropy of a uniform guess over the 10 digit classes
LOG_10 = math.log(10)

QUICK = (
    "trainer=ddp_cpu",
    "model.impl=builtin",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "viz.enabled=false",
)


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _assert_one_clean_run(run_dir: Path, learns: bool = True) -> None:
    files = _files(run_dir)
    assert files.count("metrics.json") == 1 and "train.log" in files
    assert not [f for f in files if f.endswith(".log") and f != "train.log"], files
    assert [f for f in files if f.startswith(".hydra/")] == [
        ".hydra/config.yaml",
        ".hydra/hydra.yaml",
        ".hydra/overrides.yaml",
    ]
    assert {"checkpoints/best.ckpt", "checkpoints/last.ckpt", "csv/metrics.csv"} <= set(files)
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "ok", record["error"]
    if learns:  # below a uniform guess: the two ranks trained the model together
        assert record["test/loss"] < LOG_10, record


def test_ddp_single_run(run_cli, tmp_path: Path) -> None:
    result = run_cli("cnnlab.train", *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = tmp_path / "outputs"
    (run_dir,) = (outputs / "train" / "runs").iterdir()
    assert [p.name for p in outputs.iterdir()] == ["train"]
    _assert_one_clean_run(run_dir)
    assert result.stdout.count("Run folder:") + result.stderr.count("Run folder:") == 1


def test_ddp_inside_a_sweep(run_cli, tmp_path: Path) -> None:
    result = run_cli("cnnlab.train", "-m", "optimizer=sgd,adam", *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = tmp_path / "outputs" / "train"
    assert [p.name for p in outputs.iterdir()] == ["multiruns"]  # no stray single-run folders
    (sweep,) = (outputs / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job in ("0", "1"):  # plain SGD (job 0) barely moves in 6 steps; Adam (job 1) learns
        _assert_one_clean_run(sweep / job, learns=job == "1")
    summary = (sweep / "summary.csv").read_text().splitlines()
    assert len(summary) == 3 and all(",ok," in row for row in summary[1:])
