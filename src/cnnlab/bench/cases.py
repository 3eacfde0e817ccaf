"""The benchmark cases: the article's CIFAR-10 network taken apart at batch ``B``.

Each case builds the *built-in* module; the custom twin is made from it with ``convert`` so both
run with identical weights. Shapes follow the network's data flow on 3x32x32 inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from cnnlab.models import SeedCNN


@dataclass(frozen=True)
class Case:
    """One row of the table.

    ``shape`` is the input shape without the batch dimension. ``input_grad`` is False where the
    network never needs the input gradient (the first conv sees the images). ``classes`` marks
    modules called as ``module(x, target)`` returning a scalar loss, with targets in
    ``range(classes)``; the others get a random output gradient.
    """

    name: str
    build: Callable[[], nn.Module]
    shape: tuple[int, ...]
    input_grad: bool = True
    classes: int | None = None


class NetWithLoss(nn.Module):
    """A network followed by its loss, so a training step is one module call + ``backward``."""

    def __init__(self, net: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.loss = loss

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(self.net(x), target)


def seed_cnn_step() -> nn.Module:
    return NetWithLoss(SeedCNN(impl="builtin", in_shape=(3, 32, 32)), nn.CrossEntropyLoss())


CASES: tuple[Case, ...] = (
    Case("conv1 3->32 3x3", lambda: nn.Conv2d(3, 32, 3, padding=1), (3, 32, 32), input_grad=False),
    Case("relu1", nn.ReLU, (32, 32, 32)),
    Case("maxpool1 2x2", lambda: nn.MaxPool2d(2), (32, 32, 32)),
    Case("avgpool 2x2", lambda: nn.AvgPool2d(2), (32, 32, 32)),
    Case("batchnorm 32", lambda: nn.BatchNorm2d(32), (32, 32, 32)),
    Case("conv2 32->64 3x3", lambda: nn.Conv2d(32, 64, 3, padding=1), (32, 16, 16)),
    Case("maxpool2 2x2", lambda: nn.MaxPool2d(2), (64, 16, 16)),
    Case("conv3 64->128 3x3", lambda: nn.Conv2d(64, 128, 3, padding=1), (64, 8, 8)),
    Case("maxpool3 2x2", lambda: nn.MaxPool2d(2), (128, 8, 8)),
    Case("dropout p=0.5", lambda: nn.Dropout(0.5), (2048,)),
    Case("fc1 2048->512", lambda: nn.Linear(2048, 512), (2048,)),
    Case("fc2 512->10", lambda: nn.Linear(512, 10), (512,)),
    Case("cross_entropy", nn.CrossEntropyLoss, (10,), classes=10),
    Case("seed_cnn fwd+bwd", seed_cnn_step, (3, 32, 32), input_grad=False, classes=10),
)
