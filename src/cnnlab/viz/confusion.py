"""Confusion matrix heat map and per-class precision / recall / F1 (PNG, CSV and Markdown)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from cnnlab.viz._figure import new_figure, save
from cnnlab.viz.predictions import Predictions
from cnnlab.viz.tables import markdown_table, write_csv

PER_CLASS_COLUMNS = ("class", "precision", "recall", "f1", "support")


def _tick_style(names: Sequence[str]) -> dict:
    """Slant class names only when they are long enough to collide."""
    if max(len(n) for n in names) * len(names) > 40:
        return {"rotation": 45, "ha": "right"}
    return {}


def per_class_rows(pred: Predictions, class_names: Sequence[str]) -> list[dict]:
    """One row per class; classes absent from the test set get zeros rather than warnings."""
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        pred.targets.numpy(), pred.preds.numpy(), labels=labels, zero_division=0
    )
    return [
        {"class": name, "precision": p, "recall": r, "f1": f, "support": int(s)}
        for name, p, r, f, s in zip(class_names, precision, recall, f1, support, strict=True)
    ]


def plot_confusion(pred: Predictions, class_names: Sequence[str], out: Path) -> Path:
    """Row-normalised colours (recall per true class) with raw counts written in the cells."""
    n = len(class_names)
    counts = confusion_matrix(pred.targets.numpy(), pred.preds.numpy(), labels=list(range(n)))
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = min(max(4.5, 0.55 * n + 2.5), 16)
    fig = new_figure(size + 1.2, size)
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="fraction of true class", shrink=0.8)
    ax.set_xticks(range(n), class_names, **_tick_style(class_names))
    ax.set_yticks(range(n), class_names)
    ax.set(xlabel="predicted class", ylabel="true class")
    accuracy = float(np.trace(counts)) / max(int(counts.sum()), 1)
    ax.set_title(f"Confusion matrix (test, n={int(counts.sum())}, accuracy {accuracy:.3f})")
    if n <= 25:
        for i in range(n):
            for j in range(n):
                colour = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=colour, fontsize=8)
    return save(fig, out)


def plot_per_class(rows: Sequence[dict], out: Path) -> Path:
    """Grouped bars so weak classes stand out at a glance; the exact numbers live in the CSV."""
    names = [row["class"] for row in rows]
    x = np.arange(len(names))
    fig = new_figure(min(max(6.0, 0.6 * len(names) + 2), 18), 3.8)
    ax = fig.subplots()
    for offset, metric in zip((-0.27, 0.0, 0.27), ("precision", "recall", "f1"), strict=True):
        ax.bar(x + offset, [row[metric] for row in rows], width=0.27, label=metric)
    ax.set_xticks(x, names, **_tick_style(names))
    ax.set(
        ylim=(0, 1.18),
        xlabel="class",
        ylabel="score",
        title="Per-class precision, recall and F1 (test)",
    )
    ax.legend(loc="upper center", ncol=3)
    ax.grid(axis="y", alpha=0.3)
    return save(fig, out)


def write_per_class(rows: Sequence[dict], out_dir: Path) -> list[Path]:
    """The per-class table as CSV (full precision), Markdown and a bar chart."""
    md = out_dir / "per_class_metrics.md"
    md.write_text("# Per-class metrics (test set)\n\n" + markdown_table(rows, PER_CLASS_COLUMNS))
    return [
        write_csv(rows, PER_CLASS_COLUMNS, out_dir / "per_class_metrics.csv"),
        md,
        plot_per_class(rows, out_dir / "per_class_metrics.png"),
    ]
