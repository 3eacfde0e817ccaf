"""``nn.BatchNorm2d`` twin backed by the hand-written batch-norm Function."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnlab.functional._utils import errors_named_after
from cnnlab.functional.batchnorm import batch_norm


class BatchNorm2d(nn.BatchNorm2d):
    """Same arguments, buffers (incl. ``num_batches_tracked``) and statistics as the built-in."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input(input)
        factor = self._update_factor()
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

    def _update_factor(self) -> float | torch.Tensor:
        """Count this batch and return the running-average weight, as ``nn.BatchNorm2d`` does.

        ``momentum=None`` means a cumulative moving average: the n-th batch gets weight 1/n,
        kept as a tensor: reading the count on the host would be a sync and a graph break.
        """
        if not (
            self.training and self.track_running_stats and self.num_batches_tracked is not None
        ):
            return 0.0 if self.momentum is None else self.momentum
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            return 1.0 / self.num_batches_tracked
        return self.momentum

    def _check_input(self, input: torch.Tensor) -> None:
        name = f"{type(self).__name__}({self.num_features})"
        if input.dim() != 4:
            raise ValueError(
                f"{name} expected a 4-D (N, C, H, W) input, got {input.dim()}-D input of shape "
                f"{tuple(input.shape)}; add a batch dimension with `x.unsqueeze(0)`"
            )
        if input.shape[1] != self.num_features:
            raise ValueError(
                f"{name} expected {self.num_features} channels, got {input.shape[1]} "
                f"(input shape {tuple(input.shape)})"
            )
