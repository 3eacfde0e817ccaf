"""The machine description and the results tables (plain-text aligned markdown)."""

from __future__ import annotations

import datetime
import platform
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab.machine import cpu_model


@dataclass(frozen=True)
class Row:
    """One measured case on one device/precision."""

    setting: str
    case: str
    shape: str
    builtin_ms: float
    custom_ms: float
    builtin_mib: float
    custom_mib: float


def machine_lines(threads: int, use_cuda: bool) -> list[str]:
    """The lines that say where and when the numbers were taken."""
    lines = [
        f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"cpu: {cpu_model()} ({threads} torch threads)",
        f"torch: {torch.__version__}, python {platform.python_version()}",
    ]
    if use_cuda:
        lines.append(f"gpu: {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})")
    return lines


def ratio(custom: float | None, builtin: float | None) -> str:
    """``custom / builtin`` as ``1.23x``; ``-`` where either is missing or the builtin is 0."""
    if custom is None or builtin is None or builtin <= 0:
        return "-"
    return f"{custom / builtin:.2f}x"


def aligned_table(
    header: Sequence[str], body: Sequence[Sequence[str]], numeric: Collection[int]
) -> str:
    """A markdown table padded to column width, readable both raw and rendered.

    Columns whose index is in ``numeric`` are right-aligned, the others left-aligned.
    """
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.rjust(w) if i in numeric else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        "-" * (w + 1) + ":" if i in numeric else "-" * (w + 2) for i, w in enumerate(widths)
    )
    return "\n".join([line(header), rule + "|", *(line(cells) for cells in body)])


def table(rows: list[Row]) -> str:
    """The ``layers`` table: one row per case and setting."""
    header = (
        "setting",
        "case",
        "input",
        "builtin ms",
        "custom ms",
        "time ratio",
        "builtin MiB",
        "custom MiB",
        "mem ratio",
    )
    body = [
        (
            r.setting,
            r.case,
            r.shape,
            f"{r.builtin_ms:.3f}",
            f"{r.custom_ms:.3f}",
            ratio(r.custom_ms, r.builtin_ms),
            f"{r.builtin_mib:.1f}",
            f"{r.custom_mib:.1f}",
            ratio(r.custom_mib, r.builtin_mib),
        )
        for r in rows
    ]
    return aligned_table(header, body, numeric=range(3, len(header)))


def write_markdown(path: Path, header: Sequence[str], table_text: str) -> None:
    """The header lines as a bullet list, then the table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "\n".join(f"- {line}" for line in header)
    path.write_text(f"{lines}\n\n{table_text}\n")
