"""Training curves from Lightning's ``csv/metrics.csv``: loss, accuracy and learning rate per epoch.

CSVLogger writes one sparse row per logging call, so a column can hold per-step values
(``train/loss`` or ``train/loss_step``), per-epoch values (``val/loss``, ``train/loss_epoch``) or
both. Everything is reduced to one value per epoch before plotting so train and val line up.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

from cnnlab.viz._figure import new_figure, save

EpochSeries = dict[int, float]


def read_metrics_csv(path: Path) -> dict[str, EpochSeries]:
    """Column -> {epoch: mean of that column's values logged during the epoch}.

    ``LearningRateMonitor`` writes its rows with a step but no epoch; a column that only ever
    appears in such rows is logged once per epoch, so its n-th value belongs to epoch n.
    """
    by_epoch: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    unindexed: dict[str, list[float]] = defaultdict(list)
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            epoch_text = row.get("epoch") or ""
            for column, text in row.items():
                if column in ("epoch", "step") or not text or not math.isfinite(float(text)):
                    continue
                if epoch_text:
                    by_epoch[column][int(float(epoch_text))].append(float(text))
                else:
                    unindexed[column].append(float(text))
    series = {c: {e: sum(v) / len(v) for e, v in epochs.items()} for c, epochs in by_epoch.items()}
    for column, values in unindexed.items():
        series.setdefault(column, dict(enumerate(values)))
    return series


def pick_series(metrics: dict[str, EpochSeries], split: str, name: str) -> EpochSeries | None:
    """The epoch-level flavour of ``split/name`` whichever way the module logged it."""
    for column in (f"{split}/{name}_epoch", f"{split}/{name}", f"{split}/{name}_step"):
        if metrics.get(column):
            return metrics[column]
    return None


def plot_training_curves(metrics_csv: Path, out: Path) -> Path:
    """Three panels (loss, accuracy, learning rate) against epochs, train and val overlaid."""
    metrics = read_metrics_csv(metrics_csv)
    lr_columns = sorted(c for c in metrics if c.startswith("lr"))
    if not any(pick_series(metrics, s, n) for s in ("train", "val") for n in ("loss", "acc")):
        raise ValueError(
            f"{metrics_csv} has no train/val loss or accuracy columns (found: {sorted(metrics)})."
        )
    fig = new_figure(13, 3.6)
    axes = fig.subplots(1, 3)
    for ax, name, label in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        for split, style in (("train", "-o"), ("val", "--s")):
            series = pick_series(metrics, split, name)
            if series:
                epochs = sorted(series)
                ax.plot(epochs, [series[e] for e in epochs], style, ms=4, label=split)
        ax.set(title=f"{label} per epoch", xlabel="epoch", ylabel=label)
        ax.legend()
        ax.grid(alpha=0.3)
    for column in lr_columns:
        epochs = sorted(metrics[column])
        axes[2].plot(epochs, [metrics[column][e] for e in epochs], "-o", ms=4, label=column)
    axes[2].set(title="learning rate per epoch", xlabel="epoch", ylabel="learning rate")
    if lr_columns:
        axes[2].legend()
    else:
        axes[2].text(0.5, 0.5, "no lr-* column logged", ha="center", transform=axes[2].transAxes)
    axes[2].grid(alpha=0.3)
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    return save(fig, out)
