"""The source article's CIFAR-10 network, layer for layer as its Keras ``Sequential`` model.

Keras: Conv2D(32/64/128, 3x3, padding='same', relu) each followed by MaxPooling2D(2x2),
Flatten, Dense(512, relu), Dense(10, softmax). The softmax lives in the loss here (the model
returns logits), so the parameter count is the article's: 1,147,466 on 3x32x32 inputs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn as nn

from cnnlab.layers import get_namespace
from cnnlab.models._shapes import check_in_shape, conv_out


class SeedCNN(nn.Module):
    """Conv-ReLU-MaxPool stages, then a two-layer classifier.

    ``dropout`` (the article's suggested regulariser) is applied before each dense layer and
    ``batch_norm`` puts a BatchNorm2d after each conv (whose bias is then dropped as redundant).
    Both default off so the default network is exactly the article's. A 2x2 pool halves the
    size with floor rounding: 32 -> 16 -> 8 -> 4, 28 -> 14 -> 7 -> 3, 8 -> 4 -> 2 -> 1.
    """

    def __init__(
        self,
        impl: str = "custom",
        in_shape: tuple[int, int, int] = (3, 32, 32),
        num_classes: int = 10,
        channels: Sequence[int] = (32, 64, 128),
        hidden: int = 512,
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        L = get_namespace(impl)
        in_channels, size = check_in_shape(in_shape, "SeedCNN")
        if min(size) < 2 ** len(channels):
            raise ValueError(
                f"SeedCNN with {len(channels)} 2x2 poolings needs inputs of at least "
                f"{2 ** len(channels)}x{2 ** len(channels)}, got {size[0]}x{size[1]}; "
                "use fewer `model.channels`."
            )

        stages: OrderedDict[str, nn.Module] = OrderedDict()
        for i, out_channels in enumerate(channels, start=1):
            stages[f"conv{i}"] = L.Conv2d(
                in_channels, out_channels, 3, padding="same", bias=not batch_norm
            )
            if batch_norm:
                stages[f"bn{i}"] = L.BatchNorm2d(out_channels)
            stages[f"relu{i}"] = L.ReLU()
            stages[f"pool{i}"] = L.MaxPool2d(2)
            in_channels, size = out_channels, conv_out(size, kernel=2, stride=2)
        self.features = nn.Sequential(stages)

        head: OrderedDict[str, nn.Module] = OrderedDict(flatten=L.Flatten())
        if dropout > 0:
            head["drop1"] = L.Dropout(dropout)
        head["fc1"] = L.Linear(in_channels * size[0] * size[1], hidden)
        head["relu"] = L.ReLU()
        if dropout > 0:
            head["drop2"] = L.Dropout(dropout)
        head["fc2"] = L.Linear(hidden, num_classes)
        self.classifier = nn.Sequential(head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
