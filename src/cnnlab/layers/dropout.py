"""``nn.Dropout`` and torchvision ``StochasticDepth`` twins backed by hand-written Functions."""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.ops import StochasticDepth as _TorchvisionStochasticDepth

from cnnlab.functional._utils import errors_named_after
from cnnlab.functional.dropout import dropout
from cnnlab.functional.stochastic_depth import stochastic_depth


class Dropout(nn.Dropout):
    """Same arguments, repr and train/eval behaviour as ``torch.nn.Dropout``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return dropout(input, self.p, self.training, self.inplace)


class StochasticDepth(_TorchvisionStochasticDepth):
    """torchvision's ``StochasticDepth`` (per-sample residual drop in EfficientNet, ConvNeXt,
    RegNet, ...): same ``p``, ``mode`` and repr, and the same random draws."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        with errors_named_after(self):
            return stochastic_depth(input, self.p, self.mode, self.training)
