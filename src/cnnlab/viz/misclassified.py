"""A grid of misclassified test images labelled with their true and predicted classes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from cnnlab.viz._figure import denormalize, image_grid, save, show_image
from cnnlab.viz.predictions import Predictions


def plot_misclassified(
    pred: Predictions,
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    out: Path,
) -> Path:
    """Images are shown un-normalised, i.e. as they look in the dataset."""
    count = len(pred.wrong_images)
    if count == 0:
        raise ValueError("the model classifies every test image correctly; nothing to show.")
    images = denormalize(pred.wrong_images, mean, std)
    cols = min(count, 8)
    rows = math.ceil(count / cols)
    fig, axes = image_grid(rows, cols, cell=1.6)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, true, guess in zip(
        axes.flat, images, pred.wrong_targets, pred.wrong_preds, strict=False
    ):
        ax.axis("on")
        show_image(ax, image, f"true: {class_names[true]}\npred: {class_names[guess]}")
    wrong_total = int((pred.preds != pred.targets).sum())
    fig.suptitle(f"Misclassified test images ({count} of {wrong_total} shown)")
    return save(fig, out)
