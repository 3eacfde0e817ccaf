"""Render every enabled plot of a run into ``<run>/viz/`` -- from the CLI or at the end of training.

Each plot is independent: one that cannot be drawn for this run (no CSV log yet, a network
without convolutions, a perfect classifier with no mistakes to show) is skipped with a logged
reason and the rest still render.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.viz import attribution, confusion, convs, curves, misclassified, tensorboard
from cnnlab.viz.predictions import predict, spread_sample

log = logging.getLogger(__name__)

PLOTS = ("curves", "confusion", "filters", "feature_maps", "saliency", "gradcam", "misclassified")
ATTRIBUTIONS = {
    "saliency": (attribution.saliency, "Saliency |d score / d input|"),
    "gradcam": (attribution.grad_cam, "Grad-CAM (last conv)"),
}


def _attempt(name: str, draw: Callable[[], Path | list[Path]]) -> list[Path]:
    """Run one plot; expected problems with the run become a logged skip, not a crash."""
    try:
        result = draw()
    except (ValueError, FileNotFoundError, KeyError) as err:
        log.warning("viz: skipped %s: %s", name, err)
        return []
    paths = result if isinstance(result, list) else [result]
    for path in paths:
        log.info("viz: wrote %s", path)
    return paths


def _prediction_plots(wanted: set[str], model: nn.Module, dm: Any, count: int, out: Path):
    """Confusion matrix, per-class table and misclassified grid: one pass over the test set."""
    pred = predict(model, dm.test_dataloader(), max_wrong=2 * count, num_classes=dm.num_classes)
    names = list(dm.class_names)
    written = []
    if "confusion" in wanted:
        heat_map = out / "confusion_matrix.png"
        written += _attempt("confusion", lambda: confusion.plot_confusion(pred, names, heat_map))
        rows = confusion.per_class_rows(pred, names)
        written += _attempt("per-class metrics", lambda: confusion.write_per_class(rows, out))
    if "misclassified" in wanted:
        grid = out / "misclassified.png"
        draw = misclassified.plot_misclassified
        written += _attempt("misclassified", lambda: draw(pred, names, dm.mean, dm.std, grid))
    return written


def _image_plots(wanted: set[str], model: nn.Module, dm: Any, count: int, out: Path):
    """Feature maps, saliency and Grad-CAM for ``count`` test images spread over the test set."""
    device = next(model.parameters()).device
    images, labels = spread_sample(dm.test_dataloader().dataset, count)
    images, labels = images.to(device), labels.to(device)
    written = []
    if "feature_maps" in wanted:
        first = images[:: max(1, len(images) // 4)][:4]
        written += _attempt(
            "feature maps", lambda: convs.plot_feature_maps(model, first, dm.mean, dm.std, out)
        )
    was_training = model.training
    with torch.no_grad():
        preds = model.eval()(images).argmax(dim=1)
    model.train(was_training)
    for kind in ("saliency", "gradcam"):
        if kind in wanted:
            explain, title = ATTRIBUTIONS[kind]

            def draw(explain=explain, title=title, path=out / f"{kind}.png") -> Path:
                maps = explain(model, images)
                return attribution.plot_attribution(
                    title, maps, images, labels, preds, dm.class_names, dm.mean, dm.std, path
                )

            written += _attempt(kind, draw)
    return written


def render_run(
    run_dir: str | Path,
    cfg_viz: Mapping[str, Any],
    module: nn.Module | None = None,
    datamodule: Any = None,
    out_dir: str | Path | None = None,
) -> list[Path]:
    """Draw the plots switched on in ``cfg_viz`` (the ``viz`` config group); returns the files.

    ``module`` (a ``ClassificationModule``, network at ``.model``) and ``datamodule`` are passed
    by the trainer at the end of a run; from the CLI they are rebuilt from the run folder.
    ``out_dir`` (cnnlab-viz) puts the plots elsewhere and leaves the run folder, its
    TensorBoard log included, untouched; by default they go to ``<run>/viz``.
    """
    run_dir = Path(run_dir)
    if not cfg_viz.get("enabled", True):
        log.info("viz: disabled (viz.enabled=false)")
        return []
    out = run_dir / "viz" if out_dir is None else Path(out_dir)
    mirror = tensorboard.add_images if out_dir is None else lambda *_: False
    wanted = {name for name in PLOTS if cfg_viz.get(name, True)}
    count = int(cfg_viz.get("num_images", 8))
    written: list[Path] = []
    if "curves" in wanted:
        csv_path = run_dir / "csv" / "metrics.csv"
        figure = out / "training_curves.png"
        written += _attempt("curves", lambda: curves.plot_training_curves(csv_path, figure))
    if not wanted - {"curves"}:
        mirror(run_dir, written)
        return written

    if module is None or datamodule is None:
        from cnnlab.training.builders import load_run

        _, module, datamodule = load_run(run_dir)
    model: nn.Module = module.model
    datamodule.setup("test")
    if wanted & {"confusion", "misclassified"}:
        written += _prediction_plots(wanted, model, datamodule, count, out)
    if "filters" in wanted:
        written += _attempt("filters", lambda: convs.plot_first_filters(model, out / "filters.png"))
    if wanted & {"feature_maps", "saliency", "gradcam"}:
        written += _image_plots(wanted, model, datamodule, count, out)
    mirror(run_dir, written)
    return written
