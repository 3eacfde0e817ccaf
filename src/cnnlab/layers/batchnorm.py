"""``nn.BatchNorm2d`` twin backed by the hand-written batch-norm Function."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnlab.functional._utils import errors_named_after
from cnnlab.functional.batchnorm import batch_norm


def running_average_factor(bn: nn.modules.batchnorm._BatchNorm) -> float | torch.Tensor:
    """Count this batch and return the running-average weight, as ``torch.nn``'s batch norms do.

    ``momentum=None`` means a cumulative moving average: the n-th batch gets weight 1/n,
    kept as a tensor: reading the count on the host would be a sync and a graph break.
    """
    if not (bn.training and bn.track_running_stats and bn.num_batches_tracked is not None):
        return 0.0 if bn.momentum is None else bn.momentum
    bn.num_batches_tracked.add_(1)
    if bn.momentum is None:
        return 1.0 / bn.num_batches_tracked
    return bn.momentum


def check_channels(bn: nn.modules.batchnorm._BatchNorm, input: torch.Tensor) -> None:
    """The input's dim 1 must be the layer's ``num_features``."""
    if input.shape[1] != bn.num_features:
        raise ValueError(
            f"{type(bn).__name__}({bn.num_features}) expected {bn.num_features} channels, "
            f"got {input.shape[1]} (input shape {tuple(input.shape)})"
        )


class BatchNorm2d(nn.BatchNorm2d):
    """Same arguments, buffers (incl. ``num_batches_tracked``) and statistics as the built-in."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input(input)
        factor = running_average_factor(self)
        # Batch statistics in training, or in eval when no running statistics are kept.
        use_batch_stats = self.training or self.running_mean is None
        # Running statistics are handed over only where they are read or updated.
        pass_running = not self.training or self.track_running_stats
        with errors_named_after(self):
            return batch_norm(
                input,
                self.running_mean if pass_running else None,
                self.running_var if pass_running else None,
                self.weight,
                self.bias,
                use_batch_stats,
                factor,
                self.eps,
            )

    def _check_input(self, input: torch.Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(
                f"{type(self).__name__}({self.num_features}) expected a 4-D (N, C, H, W) input, "
                f"got {input.dim()}-D input of shape {tuple(input.shape)}; add a batch dimension "
                "with `x.unsqueeze(0)`"
            )
        check_channels(self, input)
