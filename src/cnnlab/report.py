"""``cnnlab-report PATH [--out DIR]``: one table and comparison plots for any folder of runs.

PATH may be a single run, a sweep (``outputs/<task>/multiruns/<time>``) or a whole ``outputs/``
tree. The table has one row per job -- its overrides, impl, best val accuracy, test accuracy
and F1, wall time -- and the figures put the swept values side by side, custom next to built-in.
The report goes to ``--out`` or to its own folder ``outputs/report/<time>/`` (under
``$CNNLAB_ROOT`` when set), never into the runs it reads.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cnnlab.training.atomic import WriteError, atomic_write_text
from cnnlab.training.errors import user_message, verbose
from cnnlab.training.results import METRICS_FILE
from cnnlab.training.summary import collect_runs
from cnnlab.viz import sweep
from cnnlab.viz.tables import markdown_table, write_csv

log = logging.getLogger(__name__)

COLUMNS = (
    "job",
    "overrides",
    "status",
    "impl",
    "model",
    "optimizer",
    "optimizer_impl",
    "val/acc_best",
    "test/acc",
    "test/f1",
    "wall_time_s",
)
IMPL_KEYS = ("model.impl", "impl")


def _overrides(text: str) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in text.split() if "=" in item)
    return {key.lstrip("+~"): value for key, value in pairs}


def job_rows(folder: Path) -> list[dict]:
    """``collect_runs`` rows plus impl/model/optimizer from each job's ``metrics.json``."""
    rows = collect_runs(folder)
    for row in rows:
        metrics_file = folder / row["job"] / METRICS_FILE
        record = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        for key in ("impl", "model", "optimizer", "optimizer_impl"):
            row[key] = record.get(key)
    return rows


def _short(key: str) -> str:
    """``optimizer.lr`` -> ``lr``; ``optimizer.impl`` stays whole (``impl`` is the layers')."""
    return key if key.endswith(".impl") else key.split(".")[-1]


def label_settings(rows: list[dict]) -> list[str]:
    """Name each job by the overrides that vary across the jobs, impl left out (it is the hue)."""
    parsed = [_overrides(row["overrides"]) for row in rows]
    keys = sorted({k for p in parsed for k in p} - set(IMPL_KEYS))
    swept = [k for k in keys if len({p.get(k) for p in parsed}) > 1]
    for row, p in zip(rows, parsed, strict=True):
        row["setting"] = " ".join(f"{_short(k)}={p.get(k, '-')}" for k in swept) or "all jobs"
    return swept


def write_report(folder: Path, out: Path) -> list[Path]:
    """Write ``report.md``, ``report.csv``, ``accuracy.png`` and ``learning_curves.png``."""
    rows = job_rows(folder)
    if not rows:
        raise ValueError(
            f"{folder} holds no cnnlab runs (no metrics.json or .hydra/ below it); pass a run "
            "folder such as outputs/train/runs/<time> or a sweep such as "
            "outputs/train/multiruns/<time>."
        )
    swept = label_settings(rows)
    if len({row.get("impl") for row in rows}) > 1:  # the figures' hue rather than a setting
        swept.append("model.impl")
    out.mkdir(parents=True, exist_ok=True)
    written = [write_csv(rows, (*COLUMNS, "setting"), out / "report.csv")]
    figures = []
    for name, draw in (
        ("accuracy.png", lambda p: sweep.plot_accuracy_by_setting(rows, "test/acc", p)),
        ("learning_curves.png", lambda p: sweep.plot_learning_curves(rows, folder, p)),
    ):
        try:
            figures.append(draw(out / name))
        except ValueError as err:
            log.warning("cnnlab-report: skipped %s: %s", name, err)
    ok = sum(1 for r in rows if r["status"] == "ok")
    md = [
        f"# Runs in {folder}\n",
        f"{len(rows)} job(s), {ok} finished ok; swept: {', '.join(swept) or 'nothing'}.\n",
        markdown_table(rows, COLUMNS),
        *(f"![{p.stem}]({p.name})\n" for p in figures),
    ]
    atomic_write_text(out / "report.md", "\n".join(md))
    return [*written, out / "report.md", *figures]


def default_out() -> Path:
    """``outputs/report/<time>/``, next to the other commands' run folders."""
    root = Path(os.environ.get("CNNLAB_ROOT", "."))
    return root / "outputs" / "report" / time.strftime("%Y-%m-%d_%H-%M-%S")


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (``cnnlab-report``)."""
    parser = argparse.ArgumentParser(prog="cnnlab-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="a run, sweep or outputs/ folder")
    parser.add_argument(
        "--out", type=Path, help="where to write the report (default: outputs/report/<time>/)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.path.is_dir():
        sys.exit(
            f"cnnlab-report: {args.path} is not a folder; "
            "pass a run or sweep folder under outputs/."
        )
    out = args.out or default_out()
    try:
        written = write_report(args.path, out)
    except ValueError as err:
        sys.exit(f"cnnlab-report: {err}")
    except OSError as err:
        named = isinstance(err, WriteError) or err.filename or err.filename2
        if not named:  # a failed write() names no file: name the folder
            err.filename = str(out)
        message = user_message(err)
        if message is None or verbose():
            raise
        sys.exit(f"cnnlab-report: {message}")
    print(f"cnnlab-report: wrote {', '.join(str(p) for p in written)}")
    print(out.joinpath("report.md").read_text())


if __name__ == "__main__":
    main()
