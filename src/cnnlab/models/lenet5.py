"""LeNet-5 (LeCun et al. 1998) with ReLU, sized for whatever input the data module yields.

Padding rule, applied per spatial side:
  * conv1 pads 2 ('same') when the side is below 32, as the usual MNIST LeNet does for 28x28, so
    28x28 follows the classic 28 -> 14 -> 10 -> 5 path and 32x32 the paper's 28 -> 14 -> 10 -> 5;
  * any conv whose 'valid' output would be smaller than the 2x2 pool after it pads 2 instead,
    which is what keeps 8x8 digits alive: 8 -> 8 -> 4 -> 4 -> 2.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from cnnlab.layers import get_namespace
from cnnlab.models._shapes import Size, check_in_shape, conv_out

KERNEL = 5
POOLS = ("max", "avg")


def _padding(size: Size, first: bool) -> Size:
    """Per-side padding of a 5x5 conv under the rule in the module docstring."""

    def side(length: int) -> int:
        too_small_for_valid = length - KERNEL + 1 < 2
        return KERNEL // 2 if (first and length < 32) or too_small_for_valid else 0

    return side(size[0]), side(size[1])


class LeNet5(nn.Module):
    """conv6 5x5 -> pool -> conv16 5x5 -> pool -> fc120 -> fc84 -> fc, ReLU throughout.

    ``pool='avg'`` gives the paper's subsampling layers (without their trainable scale), ``'max'``
    the common modern variant.
    """

    def __init__(
        self,
        impl: str = "custom",
        in_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        pool: str = "max",
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"LeNet5 pool must be one of {POOLS}, got {pool!r}.")
        L = get_namespace(impl)
        Pool = L.MaxPool2d if pool == "max" else L.AvgPool2d
        in_channels, size = check_in_shape(in_shape, "LeNet5")
        if min(size) < 2:
            raise ValueError(f"LeNet5 needs inputs of at least 2x2, got {size[0]}x{size[1]}.")

        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, out_channels in enumerate((6, 16), start=1):
            padding = _padding(size, first=i == 1)
            layers[f"conv{i}"] = L.Conv2d(in_channels, out_channels, KERNEL, padding=padding)
            layers[f"relu{i}"] = L.ReLU()
            layers[f"pool{i}"] = Pool(2)
            size = conv_out(conv_out(size, KERNEL, padding=padding), kernel=2, stride=2)
            in_channels = out_channels
        self.features = nn.Sequential(layers)

        self.classifier = nn.Sequential(
            OrderedDict(
                flatten=L.Flatten(),
                fc1=L.Linear(in_channels * size[0] * size[1], 120),
                relu1=L.ReLU(),
                fc2=L.Linear(120, 84),
                relu2=L.ReLU(),
                fc3=L.Linear(84, num_classes),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
