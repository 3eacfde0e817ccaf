"""Saliency and Grad-CAM: which pixels and which regions drive the predicted class.

Both are plain backpropagation through the network as it is, so for ``impl=custom`` the maps
come out of the hand-written backward passes -- a visual check that those gradients are right.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.viz._figure import denormalize, new_figure, save, show_image
from cnnlab.viz.convs import as_heatmap, conv_layers


def _class_scores(model: nn.Module, images: torch.Tensor, targets: torch.Tensor | None):
    logits = model(images)
    chosen = logits.argmax(dim=1) if targets is None else targets
    return logits.gather(1, chosen[:, None]).sum(), chosen


def saliency(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor | None = None
) -> torch.Tensor:
    """|d score / d input|, max over channels (Simonyan et al. 2014); shape N x H x W.

    ``targets=None`` explains the predicted class. Parameter ``.grad`` is left untouched.
    """
    was_training = model.training
    model.eval()
    try:
        inputs = images.detach().clone().requires_grad_(True)
        score, _ = _class_scores(model, inputs, targets)
        (grad,) = torch.autograd.grad(score, inputs)
    finally:
        model.train(was_training)
    return grad.abs().amax(dim=1)


def grad_cam(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | None = None,
    layer: nn.Module | None = None,
) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017) at ``layer`` (default: last conv), upsampled to N x H x W.

    The layer's output gradient is caught with a tensor hook rather than ``autograd.grad`` on
    the activation, because an in-place ReLU after the conv would bump that tensor's version.
    """
    layer = layer if layer is not None else conv_layers(model)[-1][1]
    caught: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output):
        caught["activation"] = output.detach().clone()
        output.register_hook(lambda grad: caught.__setitem__("grad", grad.detach()))

    was_training = model.training
    model.eval()
    handle = layer.register_forward_hook(keep)
    try:
        inputs = images.detach().clone().requires_grad_(True)
        score, _ = _class_scores(model, inputs, targets)
        torch.autograd.grad(score, inputs)
    finally:
        handle.remove()
        model.train(was_training)
    weights = caught["grad"].mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * caught["activation"]).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
    return cam[:, 0]


def plot_attribution(
    kind: str,
    maps: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    preds: torch.Tensor,
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    out: Path,
) -> Path:
    """One column per image; rows: the input, the map, and the map over the input."""
    shown = denormalize(images, mean, std)
    heat = as_heatmap(maps)
    fig = new_figure(1.6 * len(images) + 0.8, 5.6)
    axes = fig.subplots(3, len(images), squeeze=False)
    for col, (image, hmap) in enumerate(zip(shown, heat, strict=True)):
        title = f"true: {class_names[labels[col]]}\npred: {class_names[preds[col]]}"
        show_image(axes[0, col], image, title)
        axes[1, col].imshow(hmap, cmap="inferno", vmin=0, vmax=1)
        show_image(axes[2, col], image, None)
        axes[2, col].imshow(hmap, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        for ax in axes[1:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, label in zip(axes[:, 0], ("input", kind.split(" ")[0], "overlay"), strict=True):
        ax.set_ylabel(label)
    fig.suptitle(f"{kind} for the predicted class (bright = more influence)")
    return save(fig, out)
