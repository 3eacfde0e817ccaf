"""``nn.MaxPool2d`` / ``nn.AvgPool2d`` / ``nn.AdaptiveAvgPool2d`` twins backed by the hand-written pooling Functions."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnlab.functional._utils import errors_named_after
from cnnlab.functional.adaptive_pool import adaptive_avg_pool2d
from cnnlab.functional.pooling import avg_pool2d, max_pool2d


class MaxPool2d(nn.MaxPool2d):
    """Same arguments, repr and behaviour as ``torch.nn.MaxPool2d``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        with errors_named_after(self):
            return max_pool2d(
                input,
                self.kernel_size,
                self.stride,
                self.padding,
                self.dilation,
                ceil_mode=self.ceil_mode,
                return_indices=self.return_indices,
            )


class AvgPool2d(nn.AvgPool2d):
    """Same arguments, repr and behaviour as ``torch.nn.AvgPool2d``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        with errors_named_after(self):
            return avg_pool2d(
                input,
                self.kernel_size,
                self.stride,
                self.padding,
                self.ceil_mode,
                self.count_include_pad,
                self.divisor_override,
            )


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """Same ``output_size`` (int, pair, ``None`` entries) and repr as ``torch.nn.AdaptiveAvgPool2d``;
    the global pool before nearly every torchvision classifier."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        with errors_named_after(self):
            return adaptive_avg_pool2d(input, self.output_size)
