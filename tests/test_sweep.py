"""`cnnlab-train -m`: one folder per sweep, a summary row per job, failures contained."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cnnlab.training.summary import COLUMNS, collect_runs, write_summary

QUICK = (
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "viz.enabled=false",
)


def _job(folder: Path, name: str, **record) -> None:
    (folder / name).mkdir(parents=True)
    (folder / name / "metrics.json").write_text(json.dumps(record))


def test_summary_has_a_row_per_job_in_job_order(tmp_path: Path) -> None:
    _job(tmp_path, "10", status="ok", overrides=["optimizer=adam"], **{"test/acc": 0.5})
    _job(tmp_path, "2", status="failed", overrides=["optimizer.lr=-1"], error="ValueError: lr")
    (tmp_path / "3" / ".hydra").mkdir(parents=True)  # killed before writing metrics.json
    rows = collect_runs(tmp_path)
    assert [r["job"] for r in rows] == ["2", "3", "10"]
    assert [r["status"] for r in rows] == ["failed", "missing", "ok"]
    csv_path, md_path = write_summary(tmp_path)
    with csv_path.open() as f:
        assert tuple(csv.DictReader(f).fieldnames) == COLUMNS
    assert "| 10 | optimizer=adam | ok |" in md_path.read_text()


@pytest.mark.slow
def test_sweep_records_every_job_and_survives_a_failing_one(run_cli, tmp_path: Path) -> None:
    result = run_cli(
        "cnnlab.train",
        "-m",
        "model.impl=custom,builtin",
        "optimizer=sgd",
        "optimizer.lr=0.05,-1",
        *QUICK,
    )
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    assert result.returncode == 1, result.stderr[-3000:]  # every job ran; two did not finish
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: 2 of 4 sweep jobs did not finish (1, 3); their errors are in "
        f"{sweep.relative_to(tmp_path)}/summary.md."  # the sweep folder as configured
    )
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    with (sweep / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and (sweep / "summary.md").is_file()
    jobs = {
        tuple(sorted(o for o in row["overrides"].split() if "impl" in o or "lr" in o)): row
        for row in rows
    }
    for impl in ("custom", "builtin"):
        ok = jobs[(f"model.impl={impl}", "optimizer.lr=0.05")]
        failed = jobs[(f"model.impl={impl}", "optimizer.lr=-1")]
        assert ok["status"] == "ok" and ok["test/acc"], rows
        assert failed["status"] == "failed" and "learning rate" in failed["error"], rows
    # same seed, init and data: hand-written and built-in layers finish at the same accuracy
    custom, builtin = (
        jobs[(f"model.impl={i}", "optimizer.lr=0.05")] for i in ("custom", "builtin")
    )
    assert float(custom["test/acc"]) == pytest.approx(float(builtin["test/acc"]), abs=0.02)
