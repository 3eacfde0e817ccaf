"""Linear warm-up followed by cosine decay, stepped once per optimizer step.

One closed-form scheduler rather than ``SequentialLR(LinearLR, CosineAnnealingLR)``: the
learning rate at step ``s`` is a formula of ``s`` alone, so a resumed run that restores
``last_epoch`` continues on exactly the curve it left, and CosineAnnealingLR's recursive update
(which accumulates rounding and is restarted by SequentialLR at the milestone) is avoided.

For base learning rate ``b``, warm-up ``W`` steps and ``T`` steps in all::

    lr(s) = b * (f + (1 - f) * s / W)                                  s < W
    lr(s) = m + (b - m) * (1 + cos(pi * min(1, (s - W) / (T - W)))) / 2  s >= W

with ``f`` = ``start_factor`` and ``m`` = ``min_lr``.
"""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

#: the curve's geometry: set from the config at construction, never from a checkpoint
_GEOMETRY = ("total_steps", "warmup_steps", "start_factor", "min_lr")


def warmup_steps_for(
    total_steps: int,
    warmup_steps: int | None = None,
    warmup_epochs: float | None = None,
    max_epochs: int | None = None,
) -> int:
    """Warm-up length in optimizer steps: ``warmup_steps`` when given, else ``warmup_epochs``
    converted with the run's steps per epoch (``total_steps / max_epochs``)."""
    if warmup_steps is not None:
        return int(warmup_steps)
    if not warmup_epochs:
        return 0
    if not max_epochs or max_epochs < 1:
        raise ValueError(
            "scheduler.warmup_epochs needs trainer.max_epochs >= 1 to convert epochs to steps; "
            "set scheduler.warmup_steps instead"
        )
    return round(warmup_epochs * total_steps / max_epochs)


class WarmupCosineLR(LRScheduler):
    """Linear warm-up from ``start_factor * lr`` to ``lr`` over the warm-up steps, then cosine
    decay to ``min_lr`` at ``total_steps`` (and ``min_lr`` after). See the module docstring.

    ``state_dict`` keeps the progress (step count, base learning rates); the geometry comes from
    the config the scheduler is built with, so a run resumed with more ``trainer.max_epochs``
    stretches the rest of its cosine to the new end instead of keeping the old one.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_steps: int | None = None,
        warmup_epochs: float | None = None,
        max_epochs: int | None = None,
        start_factor: float = 0.01,
        min_lr: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        self.total_steps = int(total_steps)
        self.warmup_steps = warmup_steps_for(total_steps, warmup_steps, warmup_epochs, max_epochs)
        self.start_factor, self.min_lr = float(start_factor), float(min_lr)
        if self.total_steps < 1:
            raise ValueError(f"scheduler.total_steps must be >= 1, got {total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(
                f"the warm-up ({self.warmup_steps} steps) must fit in the run's "
                f"{self.total_steps} optimizer steps: lower scheduler.warmup_epochs/warmup_steps"
            )
        if not 0.0 < self.start_factor <= 1.0:
            raise ValueError(f"scheduler.start_factor must be in (0, 1], got {start_factor}")
        if self.min_lr < 0:
            raise ValueError(f"scheduler.min_lr must be >= 0, got {min_lr}")
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step: int, base_lr: float) -> float:
        """The formula of the module docstring."""
        if step < self.warmup_steps:
            return base_lr * (
                self.start_factor + (1 - self.start_factor) * step / self.warmup_steps
            )
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_lr + (base_lr - self.min_lr) * (1 + math.cos(math.pi * progress)) / 2

    def get_lr(self) -> list[float]:
        return [self.lr_at(self.last_epoch, base_lr) for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().state_dict().items() if k not in _GEOMETRY}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({k: v for k, v in state_dict.items() if k not in _GEOMETRY})
