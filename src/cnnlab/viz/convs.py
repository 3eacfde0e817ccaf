"""Look inside the convolutions: first-layer filters and the feature maps of every conv stage."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnlab.viz._figure import denormalize, image_grid, rescale, save, show_image


class NoConvLayers(ValueError):
    """Raised for a network without ``Conv2d`` layers, so conv plots can be skipped by name."""


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every ``Conv2d`` in forward-definition order; custom convs subclass ``nn.Conv2d``."""
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise NoConvLayers(f"{type(model).__name__} has no Conv2d layers.")
    return convs


def plot_first_filters(model: nn.Module, out: Path) -> Path:
    """Each filter on its own colour scale: RGB when it reads 3 channels, grey otherwise."""
    name, conv = conv_layers(model)[0]
    weight = conv.weight.detach().float().cpu().numpy()
    out_ch, in_ch = weight.shape[:2]
    cols = min(out_ch, 16)
    rows = math.ceil(out_ch / cols)
    fig, axes = image_grid(rows, cols, cell=0.9)
    for ax in axes.flat:
        ax.axis("off")
    for index, ax in zip(range(out_ch), axes.flat, strict=False):
        if in_ch == 3:
            ax.imshow(rescale(weight[index].transpose(1, 2, 0)), interpolation="nearest")
        else:
            ax.imshow(weight[index].mean(axis=0), cmap="gray", interpolation="nearest")
        ax.set_title(str(index), fontsize=7)
    channels = {3: "RGB", 1: "grey"}.get(in_ch, f"mean over {in_ch} input channels")
    kh, kw = weight.shape[2:]
    fig.suptitle(f"First conv layer `{name}`: {out_ch} filters {kh}x{kw} ({channels})")
    return save(fig, out)


def stage_outputs(model: nn.Module, images: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """Output of the last conv at each spatial resolution: one map per stage of the network.

    Every conv would be too many for a ResNet; the resolution changes are where the network's
    stages begin, so the last conv before each one summarises what that stage computed.
    """
    captured: list[tuple[str, torch.Tensor]] = []
    handles = [
        conv.register_forward_hook(
            lambda _m, _i, output, name=name: captured.append((name, output.detach().clone()))
        )
        for name, conv in conv_layers(model)
    ]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    stages: dict[tuple[int, int], tuple[str, torch.Tensor]] = {}
    for name, output in captured:
        stages[tuple(output.shape[-2:])] = (name, output.cpu())
    return list(stages.values())


def plot_feature_maps(
    model: nn.Module,
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    out_dir: Path,
    channels: int = 8,
) -> list[Path]:
    """One PNG per stage: a row per image, the input first then its first ``channels`` maps."""
    was_training = model.training
    model.eval()
    try:
        stages = stage_outputs(model, images)
    finally:
        model.train(was_training)
    shown = denormalize(images, mean, std)
    paths = []
    for stage, (name, maps) in enumerate(stages, start=1):
        n_maps = min(channels, maps.shape[1])
        fig, axes = image_grid(len(images), n_maps + 1, cell=1.25)
        for row, (image, fmap) in enumerate(zip(shown, maps.float().numpy(), strict=True)):
            show_image(axes[row, 0], image, "input" if row == 0 else None)
            for ch in range(n_maps):
                ax = axes[row, ch + 1]
                ax.imshow(fmap[ch], cmap="viridis", interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(f"ch {ch}", fontsize=8)
        h, w = maps.shape[-2:]
        fig.suptitle(
            f"Stage {stage}: `{name}` output, {maps.shape[1]} channels at {h}x{w} "
            f"(first {n_maps} shown)"
        )
        paths.append(save(fig, out_dir / f"feature_maps_stage{stage}.png"))
    return paths


def as_heatmap(maps: torch.Tensor) -> np.ndarray:
    """Per-image [0, 1] scaling so each attribution map uses the full colour range."""
    return np.stack([rescale(m) for m in maps.detach().float().cpu().numpy()])
