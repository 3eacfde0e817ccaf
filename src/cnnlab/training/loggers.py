"""Lightning's CSV and TensorBoard loggers, able to continue a resumed run's history in place.

A run resumed from a checkpoint taken at logging step ``G`` must show one history: everything
logged before ``G`` (which the checkpoint's weights already reflect) and then the resumed
steps, with nothing the killed process logged after ``G`` in between. ``continue_from(G)``
arranges that before the first write: the CSV logger keeps the rows with ``step < G`` (Lightning's
own writer deletes ``metrics.csv`` as soon as it opens the folder), TensorBoard hides the events
at ``step >= G`` from earlier event files (``SummaryWriter(purge_step=G)``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers import TensorBoardLogger as _TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from cnnlab.training.atomic import atomic_write_text


def _step(row: dict[str, str]) -> float | None:
    try:
        return float(row.get("step") or "")
    except ValueError:
        return None


def read_rows_before(path: Path, step: int) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a metrics CSV logged before ``step``; a torn last line is dropped."""
    if not path.is_file():
        return [], []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = []
        for row in reader:
            value = _step(row)
            torn = None in row or None in row.values()  # too many or too few fields
            if value is None or torn or value >= step:
                continue  # a torn last line of a killed run, or logged after the checkpoint
            rows.append(row)
    return header, rows


class _ContinuedWriter(ExperimentWriter):
    """The CSV writer, starting from the rows kept from the earlier part of the run.

    The first save writes the whole file atomically (kept rows + new ones); later saves append,
    as Lightning's writer does, or rewrite atomically when new columns appear.
    """

    def __init__(self, log_dir: str, resume_step: int) -> None:
        self._resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # replaces "warn and delete metrics.csv"
        header, self._kept = read_rows_before(Path(self.metrics_file_path), self._resume_step)
        self.metrics_keys = sorted(k for k in header if k)
        self._rewrite = True

    def save(self) -> None:
        if not self.metrics:
            return
        if self._record_new_keys() or self._rewrite:
            rows = [*self._kept, *self.metrics]
            text = io.StringIO(newline="")
            writer = csv.DictWriter(text, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_text(self.metrics_file_path, text.getvalue())
            self._kept, self._rewrite = rows, False
        else:
            with open(self.metrics_file_path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.metrics_keys).writerows(self.metrics)
            self._kept.extend(self.metrics)
        self.metrics = []


class CSVLogger(_CSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` with :meth:`continue_from` for resumed runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resume_step: int | None = None

    def continue_from(self, step: int) -> None:
        """Keep the history logged before ``step``; call before anything is logged."""
        self._resume_step = int(step)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = (
                ExperimentWriter(self.log_dir)
                if self._resume_step is None
                else _ContinuedWriter(self.log_dir, self._resume_step)
            )
        return self._experiment


class TensorBoardLogger(_TensorBoardLogger):
    """``lightning.pytorch.loggers.TensorBoardLogger`` with :meth:`continue_from`."""

    def continue_from(self, step: int) -> None:
        """Hide events at ``step`` and after from earlier event files; call before logging."""
        self._kwargs["purge_step"] = int(step)
