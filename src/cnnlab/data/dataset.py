"""A dataset that serves whole batches from uint8 images.

The DataLoader calls ``__getitems__`` with all indices of a batch at once, so an in-memory split
costs one tensor gather plus one vectorised normalisation per batch instead of ``batch_size``
Python-level ``__getitem__`` calls and a ``default_collate`` -- the difference between a data
pipeline that is invisible next to a CPU training step and one that dominates it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch.utils.data import Dataset

from cnnlab.data.transforms import BatchNormalizer


class ImageSource(Protocol):
    """uint8 NCHW images addressable by index: a tensor, or files decoded on demand."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor: ...


Batch = tuple[torch.Tensor, torch.Tensor]


class ImageDataset(Dataset[Batch]):
    """The ``indices`` of ``images``/``labels``, augmented and normalised a batch at a time.

    ``augment`` sees the uint8 batch, ``after_normalize`` the normalised float one.

    A DataLoader over it needs ``collate_fn=collate_batch``, since batches arrive collated;
    ``dataset[i]`` still returns one ``(image, label)`` pair for plotting and inspection.
    """

    def __init__(
        self,
        images: ImageSource,
        labels: torch.Tensor,
        indices: torch.Tensor,
        normalizer: BatchNormalizer,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        after_normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.images = images
        self.labels = labels
        self.indices = indices
        self.normalizer = normalizer
        self.augment = augment
        self.after_normalize = after_normalize

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, positions: Sequence[int]) -> Batch:
        rows = self.indices[torch.as_tensor(positions, dtype=torch.long)]
        images = self.images[rows]
        if self.augment is not None:
            images = self.augment(images)
        images = self.normalizer(images)
        if self.after_normalize is not None:
            images = self.after_normalize(images)
        return images, self.labels[rows]

    def __getitem__(self, position: int) -> Batch:
        images, labels = self.__getitems__([position])
        return images[0], labels[0]


def collate_batch(batch: Batch) -> Batch:
    """``__getitems__`` already returns a collated batch; the DataLoader must pass it through."""
    return batch
