"""report.md, report.csv and the accuracy-vs-sparsity plot of a ``cnnlab-prune`` run."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from cnnlab.machine import cpu_model
from cnnlab.training.atomic import atomic_write_text
from cnnlab.viz._figure import new_figure, save
from cnnlab.viz.tables import markdown_table, write_csv

PLOT = "accuracy_vs_sparsity.png"


def columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    names = ["amount", "sparsity", "test_acc", "test_acc_finetuned", "params", "nonzero_params"]
    names += ["size_mb", "step_ms", "speedup", "widths", "checkpoint"]
    return [n for n in names if any(n in row for row in rows)]


def plot(rows: Sequence[Mapping[str, Any]], path: Path, title: str, xlabel: str) -> Path:
    """Test accuracy against the amount pruned, each point labelled with its size on disk."""
    fig = new_figure(6.0, 4.0)
    ax = fig.subplots()
    x = [100 * row["amount"] for row in rows]
    ax.plot(x, [100 * row["test_acc"] for row in rows], "o-", label="pruned")
    if any("test_acc_finetuned" in row for row in rows):
        ax.plot(x, [100 * row["test_acc_finetuned"] for row in rows], "s--", label="fine-tuned")
    for row, xi in zip(rows, x, strict=True):
        ax.annotate(f"{row['size_mb']:.2f} MB", (xi, 100 * row["test_acc"]), fontsize=7,
                    textcoords="offset points", xytext=(3, 3))  # fmt: skip
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)


def write_report(
    out: Path,
    rows: Sequence[Mapping[str, Any]],
    cfg: DictConfig,
    run_cfg: DictConfig,
    ckpt_file: Path,
    batch_size: int,
    command: Sequence[str] = (),
) -> None:
    kind = "structured (L1 channels cut out)" if cfg.structured else "unstructured (magnitude)"
    model = str(run_cfg.model._target_).rsplit(".", 1)[-1]
    title = f"{model} ({run_cfg.model.impl}), {kind}, scope={cfg.scope}"
    cols = columns(rows)
    write_csv(rows, cols, out / "report.csv")
    unit = "output channels/units removed" if cfg.structured else "weights zeroed"
    where = "across the layers" if cfg.scope == "global" else "in each layer"
    plot(rows, out / PLOT, title, f"amount: {unit} {where} (%)")
    epochs = int(cfg.finetune.epochs)
    lines = [
        f"# Pruning report: {title}",
        "",
        f"- checkpoint: `{ckpt_file.resolve()}`",
        f"- data: `{run_cfg.data._target_}`; layers pruned: {list(cfg.layers)}",
        f"- fine-tune: {epochs} epoch(s)" + (f" at lr {run_cfg.optimizer.lr}" if epochs else ""),
        f"- command: `cnnlab-prune {shlex.join(command or sys.argv[1:])}`",
        f"- machine: {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        f"- step: forward + loss + backward of one training batch of {batch_size}, median of "
        f"{cfg.timing.repeats} (models taking turns)",
        "- sparsity: share of the dense model's conv/linear weights that are zero or removed;"
        " size: the saved checkpoint on disk",
        "",
        markdown_table(rows, cols),
        f"![accuracy vs sparsity]({PLOT})",
        "",
    ]
    atomic_write_text(out / "report.md", "\n".join(lines))
