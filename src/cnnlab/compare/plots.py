"""Figures of the layer comparison: error magnitudes and speed ratios per layer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cnnlab.viz._figure import new_figure, save

EXACT = 1e-20  # where exact agreement (error 0) is drawn on a log axis


def plot_errors(rows: Sequence[dict], out: Path, title: str) -> Path:
    """Relative error per layer on a log axis, one marker series per compared tensor."""
    labels = [row["layer"] for row in rows]
    x = np.arange(len(rows))
    fig = new_figure(max(7.0, 0.45 * len(rows) + 2), 4.5)
    ax = fig.subplots()
    series = (
        ("fwd_rel", "output", "o"),
        ("grad_in_rel", "grad input", "s"),
        ("grad_w_rel", "grad weight", "^"),
        ("grad_b_rel", "grad bias", "v"),
    )
    for column, label, marker in series:
        values = np.array([row[column] for row in rows], dtype=float)
        shown = ~np.isnan(values)
        if shown.any():
            ax.scatter(x[shown], np.maximum(values[shown], EXACT), marker=marker, label=label)
    ax.set_yscale("log")
    ax.axhline(EXACT, color="grey", lw=0.8, ls=":")
    ax.text(0, EXACT * 3, "exact (0)", fontsize=7, color="grey")
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=8)
    ax.set(xlabel="layer", ylabel="max |custom - builtin| / max |builtin|", title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, out)


def plot_timing(rows: Sequence[dict], out: Path, title: str) -> Path:
    """Milliseconds per layer (top) and the custom/built-in ratio (bottom, 1 = parity)."""
    labels = [row["layer"] for row in rows]
    x = np.arange(len(rows))
    fig = new_figure(max(7.0, 0.45 * len(rows) + 2), 7)
    time_ax, ratio_ax = fig.subplots(2, 1, sharex=True)
    bars = (
        ("fwd_ms_custom", "forward, custom", -0.3),
        ("fwd_ms_builtin", "forward, builtin", -0.1),
        ("bwd_ms_custom", "backward, custom", 0.1),
        ("bwd_ms_builtin", "backward, builtin", 0.3),
    )
    for column, label, offset in bars:
        time_ax.bar(x + offset, [row[column] for row in rows], width=0.2, label=label)
    time_ax.set_yscale("log")
    time_ax.set(ylabel="time (ms, median)", title=title)
    time_ax.legend(fontsize=8, ncol=2)
    for column, label, marker in (("fwd_ratio", "forward", "o"), ("bwd_ratio", "backward", "s")):
        ratio_ax.plot(x, [row[column] for row in rows], marker=marker, lw=0, label=label)
    ratio_ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ratio_ax.set_yscale("log")
    ratio_ax.set(xlabel="layer", ylabel="custom / builtin time")
    ratio_ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=8)
    ratio_ax.legend(fontsize=8)
    for ax in (time_ax, ratio_ax):
        ax.grid(axis="y", alpha=0.3)
    return save(fig, out)
