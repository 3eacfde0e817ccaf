"""Data for the benchmark tests that train: small enough to build per test, easy to learn."""

from __future__ import annotations

from pathlib import Path

import torch


def two_colour_set(root: Path) -> Path:
    """A CIFAR-shaped ImageFolder of reddish and bluish 32x32 images: learnt in a few steps."""
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", 24), ("test", 8)):
        for label, colour in (("red", 0), ("blue", 2)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = torch.rand(32, 32, 3, generator=gen) * 0.4
                pixels[..., colour] += 0.6
                Image.fromarray((pixels * 255).byte().numpy()).save(folder / f"{i}.png")
    return root
