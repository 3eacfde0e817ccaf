"""``nn.LayerNorm`` twin, and the twin of torchvision ConvNeXt's channels-first ``LayerNorm2d``."""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.convnext import LayerNorm2d as _TorchvisionLayerNorm2d

from cnnlab.functional._utils import errors_named_after
from cnnlab.functional.layernorm import layer_norm


class LayerNorm(nn.LayerNorm):
    """Same arguments (``elementwise_affine``, ``bias``), parameters and repr as the built-in."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        with errors_named_after(self):
            return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class LayerNorm2d(_TorchvisionLayerNorm2d):
    """torchvision's ``LayerNorm2d`` (ConvNeXt's downsampling norm): normalise over the channels
    of an (N, C, H, W) tensor by moving them last and back, exactly as its own forward does."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        with errors_named_after(self):
            x = layer_norm(
                input.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps
            )
        return x.permute(0, 3, 1, 2)
