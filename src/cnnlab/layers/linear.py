"""``torch.nn.Linear`` with the hand-written matrix product of :mod:`cnnlab.functional.linear`."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnlab.functional._utils import errors_named_after
from cnnlab.functional.linear import linear


class Linear(nn.Linear):
    """Same constructor, init, parameters and ``state_dict`` as ``torch.nn.Linear``; only the
    computation differs, so weights load across in both directions."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        with errors_named_after(self):
            return linear(input, self.weight, self.bias)
