"""``nn.CrossEntropyLoss`` / ``nn.NLLLoss`` / ``nn.MSELoss`` twins backed by the hand-written losses."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnlab.functional._utils import errors_named_after
from cnnlab.functional.loss import cross_entropy, mse_loss, nll_loss


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """Same arguments (weight, ignore_index, reduction, label_smoothing) as the built-in."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with errors_named_after(self):
            return cross_entropy(
                input,
                target,
                weight=self.weight,
                ignore_index=self.ignore_index,
                reduction=self.reduction,
                label_smoothing=self.label_smoothing,
            )


class NLLLoss(nn.NLLLoss):
    """Same arguments (weight, ignore_index, reduction) as the built-in."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with errors_named_after(self):
            return nll_loss(
                input,
                target,
                weight=self.weight,
                ignore_index=self.ignore_index,
                reduction=self.reduction,
            )


class MSELoss(nn.MSELoss):
    """Same arguments (reduction) as the built-in."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with errors_named_after(self):
            return mse_loss(input, target, reduction=self.reduction)
