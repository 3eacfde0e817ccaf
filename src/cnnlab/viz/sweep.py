"""Figures comparing the jobs of a sweep: accuracy per swept value and all learning curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cnnlab.viz._figure import new_figure, save
from cnnlab.viz.curves import pick_series, read_metrics_csv

IMPL_COLOURS = {"custom": "tab:red", "builtin": "tab:blue"}


def plot_accuracy_by_setting(rows: Sequence[dict], metric: str, out: Path) -> Path:
    """Grouped bars: one group per setting (the swept values apart from impl), a bar per impl.

    Putting custom and built-in side by side inside each group is the comparison the project
    exists for: at equal settings the two layer families should reach the same accuracy.
    """
    settings = list(dict.fromkeys(row["setting"] for row in rows))
    impls = list(dict.fromkeys(row["impl"] or "?" for row in rows))
    width = 0.8 / len(impls)
    fig = new_figure(max(6.0, 0.9 * len(settings) * len(impls) + 2), 4.5)
    ax = fig.subplots()
    x = np.arange(len(settings))
    for k, impl in enumerate(impls):
        values = {row["setting"]: row.get(metric) for row in rows if (row["impl"] or "?") == impl}
        heights = [values.get(s) if values.get(s) is not None else np.nan for s in settings]
        bars = ax.bar(
            x + (k - (len(impls) - 1) / 2) * width,
            heights,
            width,
            label=impl,
            color=IMPL_COLOURS.get(impl),
        )
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(
        x,
        settings,
        rotation=30 if len(settings) > 3 else 0,
        ha="right" if len(settings) > 3 else "center",
    )
    ax.set(
        ylim=(0, 1.08),
        xlabel="swept setting",
        ylabel=metric,
        title=f"{metric} per job, custom vs built-in",
    )
    ax.legend(title="impl")
    ax.grid(axis="y", alpha=0.3)
    return save(fig, out)


def plot_learning_curves(rows: Sequence[dict], folder: Path, out: Path) -> Path:
    """Validation accuracy and training loss per epoch for every job, one line each.

    Colour follows the swept setting and line style the impl (solid custom, dashed built-in),
    so twin runs that agree draw one line over the other instead of hiding it.
    """
    fig = new_figure(12, 4.5)
    acc_ax, loss_ax = fig.subplots(1, 2)
    colours = {s: f"C{i % 10}" for i, s in enumerate(dict.fromkeys(r["setting"] for r in rows))}
    drawn = 0
    for row in rows:
        csv_path = folder / row["job"] / "csv" / "metrics.csv"
        if not csv_path.is_file():
            continue
        metrics = read_metrics_csv(csv_path)
        dashed = row["impl"] == "builtin"
        style = dict(
            color=colours[row["setting"]],
            ls="--" if dashed else "-",
            marker="s" if dashed else "o",
            ms=3,
            alpha=0.85,
            label=f"job {row['job']}: {row['setting']} ({row['impl']})",
        )
        for ax, split, name in ((acc_ax, "val", "acc"), (loss_ax, "train", "loss")):
            series = pick_series(metrics, split, name)
            if series:
                epochs = sorted(series)
                ax.plot(epochs, [series[e] for e in epochs], **style)
                drawn += 1
    if not drawn:
        raise ValueError("no job has a csv/metrics.csv with val/acc or train/loss to plot.")
    acc_ax.set(title="Validation accuracy", xlabel="epoch", ylabel="val accuracy")
    loss_ax.set(title="Training loss", xlabel="epoch", ylabel="train loss")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    acc_ax.legend(fontsize=7)
    return save(fig, out)
