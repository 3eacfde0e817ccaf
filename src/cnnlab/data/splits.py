"""Seeded, stratified index splits.

Every data module carves its validation (and, for digits, test) split with this one function, so
a split depends only on the labels and ``split_seed``: the same seed gives the same images in
every run, on every rank, with or without workers, and each class keeps its share of the split.
"""

from __future__ import annotations

import torch


def stratified_split(
    labels: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(len(labels))`` into sorted (kept, held_out) index tensors.

    Exactly ``round(fraction * len(labels))`` indices are held out, spread over the classes in
    proportion to their sizes: each sample gets its relative position inside its (shuffled)
    class, and the lowest positions are held out. Rounding per class instead would hold out
    nothing from small classes (round(0.1 * 5) == 0).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"split fraction must be in [0, 1), got {fraction}")
    n = len(labels)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    shuffled = labels[order]
    counts = torch.bincount(shuffled)
    sorted_labels, by_class = torch.sort(shuffled, stable=True)
    rank = torch.empty(n, dtype=torch.float64)
    rank[by_class] = (torch.arange(n) - (counts.cumsum(0) - counts)[sorted_labels]).double()
    position = (rank + 0.5) / counts[shuffled]
    held = torch.zeros(n, dtype=torch.bool)
    held[order[torch.argsort(position, stable=True)[: round(fraction * n)]]] = True
    return torch.nonzero(~held).flatten(), torch.nonzero(held).flatten()
