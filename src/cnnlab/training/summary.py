"""One table per sweep: a row per job with its overrides, status and headline metrics.

``SweepSummary`` writes it when a ``-m`` sweep ends; ``cnnlab-report`` reuses ``collect_runs``
and ``write_summary`` on any folder of runs.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cnnlab.training.atomic import atomic_write_text
from cnnlab.training.results import METRICS_FILE

log = logging.getLogger(__name__)

#: Statuses that make a sweep exit non-zero: an error, or a job killed before it wrote a record.
FAILED = ("failed", "missing")
COLUMNS = (
    "job",
    "overrides",
    "status",
    "val/acc_best",
    "test/acc",
    "test/f1",
    "wall_time_s",
    "error",
)


def _job_key(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (1 << 30, path.name)


def _row(job_dir: Path, folder: Path) -> dict[str, Any]:
    metrics_file = job_dir / METRICS_FILE
    if metrics_file.is_file():
        record = json.loads(metrics_file.read_text())
    else:  # killed before it could write anything, e.g. out of memory
        record = {"status": "missing", "error": f"no {METRICS_FILE}"}
    row = {key: record.get(key) for key in COLUMNS}
    row["job"] = job_dir.relative_to(folder).as_posix()
    row["overrides"] = " ".join(record.get("overrides") or [])
    return row


def collect_runs(folder: str | Path) -> list[dict[str, Any]]:
    """A row per run folder under ``folder`` (a run holds ``metrics.json`` or ``.hydra/``)."""
    folder = Path(folder)
    job_dirs = {p.parent for p in folder.rglob(METRICS_FILE)}
    job_dirs |= {p.parent for p in folder.rglob(".hydra") if p.is_dir()}
    return [_row(job, folder) for job in sorted(job_dirs, key=_job_key)]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_summary(
    folder: str | Path, rows: list[dict[str, Any]] | None = None
) -> tuple[Path, Path]:
    """Write ``summary.csv`` and ``summary.md`` into ``folder`` (each replaced atomically);
    ``rows``: its :func:`collect_runs`, when the caller has read them already."""
    folder = Path(folder)
    rows = collect_runs(folder) if rows is None else rows
    csv_path, md_path = folder / "summary.csv", folder / "summary.md"
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(csv_path, table.getvalue())
    lines = [
        f"# Sweep summary: {folder}",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *("| " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |" for row in rows),
    ]
    lines += _search_results(folder)
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return csv_path, md_path


def _search_results(folder: Path) -> list[str]:
    """The best trial of a hyperparameter search (``optimization_results.yaml``, written by
    hydra-optuna-sweeper) and its history plot, as markdown lines; none for a grid sweep."""
    results_file = folder / "optimization_results.yaml"
    if not results_file.is_file():
        return []
    from omegaconf import OmegaConf

    results = OmegaConf.to_container(OmegaConf.load(results_file))
    lines = ["", "## Best trial", ""]
    if "best_value" in results:
        lines += [f"best value: {_cell(results['best_value'])}", ""]
        lines += [f"- `{k}={v}`" for k, v in (results.get("best_params") or {}).items()]
    else:  # several objectives: the Pareto front
        lines += [f"- {s['values']}: {s['params']}" for s in results.get("solutions") or []]
    if (folder / "optimization_history.png").is_file():
        lines += ["", "![optimization history](optimization_history.png)"]
    return lines


class SweepSummary(Callback):
    """Hydra callback (registered in conf/hydra/default.yaml) run once after a ``-m`` sweep."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write the summary; then, if a job failed, end the sweep with exit status 1.

        Every job has run by then (a failing one does not stop the others), but a script or CI
        step that launched the sweep must still learn that one did not finish. Diverged
        (``nan``) jobs are results of the sweep, not failures.
        """
        rows = collect_runs(config.hydra.sweep.dir)
        _, md_path = write_summary(config.hydra.sweep.dir, rows)
        log.info("Sweep summary: %s\n%s", md_path, md_path.read_text())
        failed = [row["job"] for row in rows if row["status"] in FAILED]
        if failed:
            print(
                f"Error: {len(failed)} of {len(rows)} sweep jobs did not finish "
                f"({', '.join(failed)}); their errors are in {md_path}.",
                file=sys.stderr,
            )
            raise SystemExit(1)
