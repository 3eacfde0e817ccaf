"""A small VGG (Simonyan & Zisserman 2015) for CIFAR-sized inputs.

The config list reads like torchvision's VGG configs: an int is a 3x3 'same' conv with that many
output channels (+ BatchNorm + ReLU), ``"M"`` a 2x2 max-pool. A pool that would shrink a side
below 1 is skipped, so the same list runs on 8x8 digits as on 32x32 CIFAR images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from cnnlab.layers import get_namespace
from cnnlab.models._shapes import check_in_shape, conv_out

DEFAULT_CFG = (64, "M", 128, "M", 256, 256, "M")


class VGG(nn.Module):
    """``features`` from ``cfg``, then dropout -> fc ``hidden`` -> ReLU -> dropout -> fc."""

    def __init__(
        self,
        impl: str = "custom",
        in_shape: tuple[int, int, int] = (3, 32, 32),
        num_classes: int = 10,
        cfg: Sequence[int | str] = DEFAULT_CFG,
        batch_norm: bool = True,
        hidden: int = 512,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        L = get_namespace(impl)
        in_channels, size = check_in_shape(in_shape, "VGG")

        layers: list[nn.Module] = []
        for item in cfg:
            if item == "M":
                if min(size) >= 2:
                    layers.append(L.MaxPool2d(2))
                    size = conv_out(size, kernel=2, stride=2)
                continue
            if not isinstance(item, int) or item < 1:
                raise ValueError(
                    f"VGG cfg entries must be positive channel counts or 'M', got {item!r} "
                    f"in {list(cfg)}."
                )
            layers.append(L.Conv2d(in_channels, item, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(L.BatchNorm2d(item))
            layers.append(L.ReLU())
            in_channels = item
        self.features = nn.Sequential(*layers)

        self.classifier = nn.Sequential(
            L.Flatten(),
            L.Dropout(dropout),
            L.Linear(in_channels * size[0] * size[1], hidden),
            L.ReLU(),
            L.Dropout(dropout),
            L.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
