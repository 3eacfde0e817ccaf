"""Figure plumbing shared by every plot: Agg-only figures and images ready to display.

Plots build ``matplotlib.figure.Figure`` objects directly instead of going through ``pyplot``:
no global backend is switched, no window can open on a head-less node, and figures are freed as
soon as they go out of scope instead of piling up in pyplot's registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(width: float, height: float) -> Figure:
    """A figure bound to the Agg canvas, sized in inches, laid out so labels never overlap."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def image_grid(rows: int, cols: int, cell: float, title_space: float = 0.6):
    """A figure of ``rows`` x ``cols`` image cells of ``cell`` inches, and its axes array.

    Grids use fixed margins instead of constrained layout, which costs seconds once there are
    dozens of axes and has nothing to resolve between tick-less images.
    """
    width, height = cols * cell, rows * cell + title_space
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(
        left=0.02, right=0.98, bottom=0.02, top=1 - title_space / height, wspace=0.08, hspace=0.35
    )
    return fig, axes


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG, creating the folder; returns the path for the caller's file list."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo the data module's normalisation so images look as stored: NCHW -> NHWC in [0, 1]."""
    images = images.detach().float().cpu()
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    images = (images * std_t + mean_t).clamp(0.0, 1.0)
    return images.permute(0, 2, 3, 1).numpy()


def show_image(ax: Axes, image: np.ndarray, title: str | None = None) -> None:
    """Draw one HWC image (grey when single-channel) without axes clutter."""
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def rescale(array: np.ndarray) -> np.ndarray:
    """Stretch to [0, 1] for display; a constant map becomes all zeros instead of NaN."""
    lo, hi = float(array.min()), float(array.max())
    return (array - lo) / (hi - lo) if hi > lo else np.zeros_like(array)
