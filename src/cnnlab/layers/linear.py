"""``torch.nn.Linear`` with the hand-written matrix product of :mod:`cnnlab.functional.linear`."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnlab.functional.linear import linear


class Linear(nn.Linear):
    """Same constructor, init, parameters and ``state_dict`` as ``torch.nn.Linear``; only the
    computation differs, so weights load across in both directions."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return linear(
            input, self.weight, self.bias, name=f"{type(self).__name__}({self.extra_repr()})"
        )
