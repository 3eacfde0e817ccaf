"""One pass over the test set that every prediction-based plot shares."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset


@dataclass
class Predictions:
    """Test-set labels and predictions, plus the first misclassified images for the error grid."""

    targets: torch.Tensor
    preds: torch.Tensor
    wrong_images: torch.Tensor
    wrong_targets: torch.Tensor
    wrong_preds: torch.Tensor


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable, max_wrong: int, num_classes: int) -> Predictions:
    """Run ``model`` (eval mode, its own device) over ``batches`` of ``(images, labels)``.

    Only ``max_wrong`` misclassified images are kept, so a 10 000-image test set costs two
    integer vectors rather than a copy of the data. At most ``max_wrong / num_classes`` are kept
    per true class: test sets are often sorted by class, and a grid of one class's mistakes
    says little about the model.
    """
    per_class = max(1, -(-max_wrong // num_classes))
    kept_per_class = [0] * num_classes
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
            keep = []
            for i in (batch_preds != labels).nonzero().flatten().tolist()[: max(room, 0) * 50]:
                label = int(labels[i])
                if len(keep) < room and kept_per_class[label] < per_class:
                    kept_per_class[label] += 1
                    keep.append(i)
            wrong_images.append(images.cpu()[keep])
            wrong_targets.append(labels[keep])
            wrong_preds.append(batch_preds[keep])
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


def spread_sample(dataset: Dataset, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images evenly spaced over ``dataset``, read by index (no pass over the data).

    Evenly spaced rather than the first batch, so a class-sorted test set still shows every
    class.
    """
    if len(dataset) == 0:
        raise ValueError("the test split holds no images; check the data config's split.")
    wanted = torch.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().long()
    images, labels = zip(*(dataset[int(i)] for i in wanted), strict=True)
    return torch.stack(images), torch.as_tensor(labels)
