"""``nn.ReLU`` and ``nn.Flatten`` twins."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnlab.functional.activation import relu


class ReLU(nn.ReLU):
    """Same arguments (incl. ``inplace``) and repr as ``torch.nn.ReLU``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return relu(input, inplace=self.inplace)


class Flatten(nn.Flatten):
    """``torch.nn.Flatten`` as is: flattening is a view with no kernel to re-implement.

    It lives here so that a model built from the ``custom`` namespace finds every layer it uses.
    """
