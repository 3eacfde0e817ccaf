"""``torch.nn.Conv2d`` with the hand-written im2col convolution of :mod:`cnnlab.functional.conv`."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.functional._utils import errors_named_after
from cnnlab.functional.conv import conv2d


class Conv2d(nn.Conv2d):
    """Same constructor, init, parameters and ``state_dict`` as ``torch.nn.Conv2d``; only the
    computation differs, so weights load across in both directions.

    Non-zero ``padding_mode``s pad explicitly first (padding is a data copy, not a convolution)
    and then convolve without padding -- the same split ``torch.nn.Conv2d`` makes.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        with errors_named_after(self):
            padding = self.padding
            if self.padding_mode != "zeros":
                if input.dim() not in (3, 4):
                    raise ValueError(
                        "conv2d expected a 3-D (C, H, W) or 4-D (N, C, H, W) input, "
                        f"got shape {tuple(input.shape)}"
                    )
                pad = self._reversed_padding_repeated_twice
                input, padding = F.pad(input, pad, mode=self.padding_mode), 0
            return conv2d(
                input, self.weight, self.bias, self.stride, padding, self.dilation, self.groups
            )
