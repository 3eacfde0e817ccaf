"""Batch-level MixUp / CutMix (torchvision.transforms.v2) with the options of ``data.mixup``/``data.cutmix``.

The data module owns the options (they are a property of the training data) and hands a
``BatchMix`` to the LightningModule, which applies it in ``training_step`` -- after the batch is on
its device, so mixing costs one fused multiply-add on the GPU, each DDP rank mixes its own shard,
and validation/test never see it. v2's transforms draw lambda (and CutMix's box) on the CPU as
Python numbers from torch's global generator: no host-device sync, and the draws are part of the
RNG state every checkpoint stores. Pairs are an image and its neighbour in the (shuffled) batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms import v2

from cnnlab.data.policies import options_from_config


@dataclass(frozen=True)
class MixUpOptions:
    """``data.mixup``: MixUp's Beta(alpha, alpha), and how often (and which) a batch is mixed."""

    alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise ValueError(f"data.mixup.alpha must be >= 0 (0 = off), got {self.alpha}")
        for name in ("prob", "switch_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"data.mixup.{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class CutMixOptions:
    """``data.cutmix``: CutMix's Beta(alpha, alpha) for the pasted box's area."""

    alpha: float = 0.0

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise ValueError(f"data.cutmix.alpha must be >= 0 (0 = off), got {self.alpha}")


def mix_options(
    mixup: MixUpOptions | Mapping[str, Any] | None, cutmix: CutMixOptions | Mapping[str, Any] | None
) -> tuple[MixUpOptions, CutMixOptions]:
    return (
        options_from_config(MixUpOptions, mixup, "data.mixup"),
        options_from_config(CutMixOptions, cutmix, "data.cutmix"),
    )


class BatchMix:
    """``(images, labels) -> (mixed images, soft targets)`` for a training batch.

    With probability ``1 - mixup.prob`` a batch passes unmixed with its class-index labels (the
    loss is then exactly the unmixed one); with both methods on, a mixed batch uses CutMix with
    probability ``mixup.switch_prob``, else MixUp (timm's and torchvision's recipe convention).
    """

    def __init__(self, num_classes: int, mixup: MixUpOptions, cutmix: CutMixOptions) -> None:
        if not (mixup.alpha > 0 or cutmix.alpha > 0):
            raise ValueError("BatchMix needs data.mixup.alpha > 0 or data.cutmix.alpha > 0")
        self.prob, self.switch_prob = mixup.prob, mixup.switch_prob
        self.mixup = v2.MixUp(alpha=mixup.alpha, num_classes=num_classes) if mixup.alpha else None
        self.cutmix = (
            v2.CutMix(alpha=cutmix.alpha, num_classes=num_classes) if cutmix.alpha else None
        )

    def _pick(self) -> v2.Transform:
        if self.mixup is None or self.cutmix is None:
            return self.mixup or self.cutmix
        return self.cutmix if float(torch.rand(())) < self.switch_prob else self.mixup

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prob < 1.0 and float(torch.rand(())) >= self.prob:
            return images, labels
        return self._pick()(images, labels)


def hard_labels(targets: torch.Tensor) -> torch.Tensor:
    """Class indices of a batch's targets: the labels themselves, or the class with the larger
    weight in each mixed target (the image that dominates the mix), for accuracy metrics."""
    return targets.argmax(dim=1) if targets.is_floating_point() else targets
