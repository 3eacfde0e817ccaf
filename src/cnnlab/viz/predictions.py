"""One pass over the test set that every prediction-based plot shares."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Predictions:
    """Test-set labels and predictions, plus the first misclassified images for the error grid."""

    targets: torch.Tensor
    preds: torch.Tensor
    wrong_images: torch.Tensor
    wrong_targets: torch.Tensor
    wrong_preds: torch.Tensor


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable, max_wrong: int) -> Predictions:
    """Run ``model`` (eval mode, its own device) over ``batches`` of ``(images, labels)``.

    Only ``max_wrong`` misclassified images are kept, so a 10 000-image test set costs two
    integer vectors rather than a copy of the data.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    targets, preds, wrong_images, wrong_targets, wrong_preds = [], [], [], [], []
    try:
        for images, labels in batches:
            batch_preds = model(images.to(device)).argmax(dim=1).cpu()
            labels = labels.cpu()
            targets.append(labels)
            preds.append(batch_preds)
            room = max_wrong - sum(len(t) for t in wrong_targets)
            mask = batch_preds != labels
            wrong_images.append(images.cpu()[mask][:room])
            wrong_targets.append(labels[mask][:room])
            wrong_preds.append(batch_preds[mask][:room])
    finally:
        model.train(was_training)
    if not targets:
        raise ValueError("the test dataloader yielded no batches; check the data config's split.")
    return Predictions(
        torch.cat(targets),
        torch.cat(preds),
        torch.cat(wrong_images),
        torch.cat(wrong_targets),
        torch.cat(wrong_preds),
    )
