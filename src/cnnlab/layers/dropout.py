"""``nn.Dropout`` twin backed by the hand-written dropout Function."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnlab.functional.dropout import dropout


class Dropout(nn.Dropout):
    """Same arguments, repr and train/eval behaviour as ``torch.nn.Dropout``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return dropout(input, self.p, self.training, self.inplace)
