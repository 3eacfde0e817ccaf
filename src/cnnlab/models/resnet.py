"""CIFAR ResNets (He et al. 2016, section 4.2): ResNet-20/32/56 and kin.

A 3x3 stem conv, three stages of ``n`` basic blocks at ``base_width`` x 1/2/4 channels (16/32/64
by default; the 2nd and 3rd stages halve the spatial size), global average pooling and one fully
connected layer: ``6n + 2`` weighted layers. Global pooling is an ``AvgPool2d`` whose kernel is
the final feature-map size, computed from ``in_shape``, so it runs through the hand-written
pooling of ``impl=custom`` too.

Shortcuts where the shape changes: option B (default) is a strided 1x1 conv + BatchNorm
projection, option A the paper's parameter-free identity that subsamples and zero-pads the new
channels (the variant behind the paper's 0.27M-parameter ResNet-20).
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.layers import get_namespace
from cnnlab.models._shapes import check_in_shape, conv_out

DEPTHS = (20, 32, 44, 56, 110)
SHORTCUTS = ("A", "B")


class PadShortcut(nn.Module):
    """Option A: take every ``stride``-th pixel and zero-pad the extra channels evenly."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_front = (out_channels - in_channels) // 2
        self.pad_back = out_channels - in_channels - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a ReLU between, added to the shortcut, then ReLU."""

    def __init__(
        self, L: ModuleType, in_channels: int, out_channels: int, stride: int, shortcut: str
    ) -> None:
        super().__init__()
        self.conv1 = L.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = L.BatchNorm2d(out_channels)
        self.relu1 = L.ReLU()
        self.conv2 = L.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = L.BatchNorm2d(out_channels)
        self.relu2 = L.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            if shortcut == "A":
                self.shortcut = PadShortcut(in_channels, out_channels, stride)
            else:
                self.shortcut = nn.Sequential(
                    L.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                    L.BatchNorm2d(out_channels),
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet of ``depth = 6n + 2`` layers; He (fan-out) init for convs as in the paper."""

    def __init__(
        self,
        impl: str = "custom",
        in_shape: tuple[int, int, int] = (3, 32, 32),
        num_classes: int = 10,
        depth: int = 20,
        base_width: int = 16,
        shortcut: str = "B",
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(
                f"ResNet depth must be 6n + 2 (n >= 1) for CIFAR ResNets, e.g. one of {DEPTHS}; "
                f"got {depth}."
            )
        if shortcut not in SHORTCUTS:
            raise ValueError(f"ResNet shortcut must be one of {SHORTCUTS}, got {shortcut!r}.")
        L = get_namespace(impl)
        in_channels, size = check_in_shape(in_shape, "ResNet")
        blocks_per_stage = (depth - 2) // 6

        self.conv1 = L.Conv2d(in_channels, base_width, 3, padding=1, bias=False)
        self.bn1 = L.BatchNorm2d(base_width)
        self.relu = L.ReLU()
        in_channels = base_width
        for index, width in enumerate((base_width, 2 * base_width, 4 * base_width), start=1):
            stride = 1 if index == 1 else 2
            blocks = []
            for block in range(blocks_per_stage):
                s = stride if block == 0 else 1
                blocks.append(BasicBlock(L, in_channels, width, s, shortcut))
                in_channels = width
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
            size = conv_out(size, kernel=3, stride=stride, padding=1)
        self.avgpool = L.AvgPool2d(kernel_size=size)
        self.flatten = L.Flatten()
        self.fc = L.Linear(in_channels, num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))
