"""cnnlab-report: one row per job of a real sweep, the comparison figures, clear bad-path errors."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.report import main as report_main
from training_helpers import train_in_process

QUICK = (
    "trainer=cpu",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "viz.enabled=false",
    "model.channels=[8,16,16]",
    "model.hidden=32",
)


def train_job(job_dir: Path, *overrides: str) -> None:
    """A real cnnlab-train job, in-process, as if it were one job of a ``-m`` sweep."""
    train_in_process(job_dir, *overrides, *QUICK)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("report") / "multiruns" / "2024-01-01_00-00-00"
    for job, impl in enumerate(("custom", "builtin")):
        train_job(folder / str(job), f"model.impl={impl}", "optimizer=sgd")
    return folder


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_report_has_a_row_per_job_and_figures(sweep_dir: Path, tmp_path: Path, capsys) -> None:
    report_main([str(sweep_dir), "--out", str(tmp_path)])
    rows = read_csv(tmp_path / "report.csv")
    assert [r["job"] for r in rows] == ["0", "1"]
    assert [r["impl"] for r in rows] == ["custom", "builtin"]
    assert all(r["status"] == "ok" for r in rows)
    # same init, same data, same optimizer: the two layer families end at the same accuracy
    assert float(rows[0]["test/acc"]) == pytest.approx(float(rows[1]["test/acc"]), abs=0.02)
    assert all(float(r["wall_time_s"]) > 0 and r["test/f1"] for r in rows)
    assert "model.impl=builtin" in rows[1]["overrides"]
    markdown = (tmp_path / "report.md").read_text()
    assert "2 job(s), 2 finished ok" in markdown and "model.impl=custom" in markdown
    for name in ("accuracy.png", "learning_curves.png"):
        with Image.open(tmp_path / name) as image:
            assert np.asarray(image.convert("RGB"), dtype=float).std() > 0
    assert "report.md" in capsys.readouterr().out


def test_report_on_a_single_run_goes_to_its_own_folder(sweep_dir: Path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report_main([str(sweep_dir / "1")])
    (own,) = (tmp_path / "outputs" / "report").iterdir()
    assert [r["impl"] for r in read_csv(own / "report.csv")] == ["builtin"]
    assert not (sweep_dir / "1" / "report.csv").exists()  # nothing written into the run


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp, "holds no cnnlab runs"),
        (lambda tmp: tmp / "missing", "is not a folder"),
    ],
)
def test_bad_paths_get_a_clear_message(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        report_main([str(make(tmp_path))])


@pytest.mark.slow
def test_report_lists_every_job_of_a_cli_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    train = [
        sys.executable,
        "-m",
        "cnnlab.train",
        "-m",
        "model.impl=custom,builtin",
        "optimizer=sgd,adam",
        f"hydra.sweep.dir={sweep}",
        *QUICK,
    ]
    trained = subprocess.run(train, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert trained.returncode == 0, trained.stderr[-3000:]
    report = [sys.executable, "-m", "cnnlab.report", str(sweep), "--out", str(tmp_path / "rep")]
    result = subprocess.run(report, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_csv(tmp_path / "rep" / "report.csv")
    assert sorted(r["job"] for r in rows) == ["0", "1", "2", "3"]
    assert {(r["impl"], r["optimizer"]) for r in rows} == {
        (impl, opt) for impl in ("custom", "builtin") for opt in ("sgd", "adam")
    }
    assert "swept: optimizer, model.impl." in (tmp_path / "rep" / "report.md").read_text()
