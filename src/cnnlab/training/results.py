"""``metrics.json``: the one-file summary of a run that sweeps, compare and report read.

Its fields are fixed by docs/architecture.md; every run writes it, including failed, diverged
(``nan``) and interrupted ones, so a sweep table always has a row per job. It is replaced
atomically, so a reader never sees an empty or half-written file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cnnlab.training.atomic import atomic_write_text

METRICS_FILE = "metrics.json"
RESULT_KEYS = ("val/acc_best", "test/acc", "test/f1", "test/precision", "test/recall", "test/loss")
STATUSES = ("ok", "failed", "interrupted", "nan")


def run_overrides() -> list[str]:
    """The command-line overrides of the current Hydra job (empty outside Hydra)."""
    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def _choice(cfg: DictConfig, group: str) -> str | None:
    """The config name a group was composed from, else the class name of its ``_target_``."""
    name = (cfg.get("choices") or {}).get(group)
    if name:
        return str(name)
    target = (cfg.get(group) or {}).get("_target_")
    return str(target).rsplit(".", 1)[-1] if target else None


def _number(value: Any) -> float | None:
    """Metrics as JSON numbers; NaN/inf become null so the file stays strict JSON."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def write_metrics(
    run_dir: str | Path,
    cfg: DictConfig,
    *,
    status: str,
    metrics: Mapping[str, Any],
    wall_time_s: float,
    error: str | None = None,
    **extra: Any,
) -> Path:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    record: dict[str, Any] = {
        "status": status,
        "error": error,
        "overrides": run_overrides(),
        "impl": cfg.model.get("impl"),
        "model": _choice(cfg, "model"),
        "data": _choice(cfg, "data"),
        "optimizer": _choice(cfg, "optimizer"),
        "optimizer_impl": (cfg.get("optimizer") or {}).get("impl", "builtin"),
        **{key: _number(metrics.get(key)) for key in RESULT_KEYS},
        "wall_time_s": round(wall_time_s, 3),
        **extra,
    }
    return atomic_write_text(Path(run_dir) / METRICS_FILE, json.dumps(record, indent=2) + "\n")


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / METRICS_FILE).read_text())


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """One line per result, for the end-of-run printout."""
    rows = [(key, metrics.get(key)) for key in RESULT_KEYS if metrics.get(key) is not None]
    return "\n".join(f"  {key:<15} {float(value):.4f}" for key, value in rows)


@dataclass(frozen=True)
class EarlierRecord:
    """A run folder's ``metrics.json`` and checkpoints as they were before this job started.

    A continuation (``ckpt_path=<run>``) writes into the finished run's folder. One that fails
    before it saves a checkpoint (``trainer.max_epochs`` below the checkpoint's epoch, a bad
    override) has changed nothing there, so the record of the finished run stays, with the
    failure added, instead of a ``failed`` record without the run's scores.
    """

    run_dir: Path
    record: dict[str, Any]
    checkpoints: dict[str, int]  # file name -> modification time, ns

    @classmethod
    def of(cls, run_dir: str | Path) -> EarlierRecord | None:
        try:
            record = read_metrics(run_dir)
        except (OSError, ValueError):  # a fresh folder, or an unreadable record: nothing to keep
            return None
        return cls(Path(run_dir), record, _checkpoint_times(run_dir))

    def untouched(self) -> bool:
        return _checkpoint_times(self.run_dir) == self.checkpoints

    def keep(self, error: str) -> Path:
        """Write the earlier record back with ``continue_error`` set to this job's error."""
        record = {**self.record, "continue_error": error}
        path = self.run_dir / METRICS_FILE
        return atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def _checkpoint_times(run_dir: str | Path) -> dict[str, int]:
    folder = Path(run_dir) / "checkpoints"
    files = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
    return {f.name: f.stat().st_mtime_ns for f in files}
