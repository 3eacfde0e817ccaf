"""The machine description and the results table (plain-text aligned markdown)."""

from __future__ import annotations

import datetime
import platform
from dataclasses import dataclass

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


def _ratio(custom: float, builtin: float) -> str:
    return f"{custom / builtin:.2f}x" if builtin > 0 else "-"


def table(rows: list[Row]) -> str:
    """A markdown table padded to column width, readable both raw and rendered."""
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
            _ratio(r.custom_ms, r.builtin_ms),
            f"{r.builtin_mib:.1f}",
            f"{r.custom_mib:.1f}",
            _ratio(r.custom_mib, r.builtin_mib),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]
    numeric = range(3, len(header))

    def line(cells: tuple[str, ...]) -> str:
        padded = (
            cell.rjust(w) if i in numeric else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        "-" * (w + 1) + ":" if i in numeric else "-" * (w + 2) for i, w in enumerate(widths)
    )
    return "\n".join([line(header), rule + "|", *(line(cells) for cells in body)])
