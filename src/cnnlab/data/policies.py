"""RandAugment, TrivialAugmentWide and RandomErasing from torchvision.transforms.v2, per image.

v2 transforms draw one set of random parameters per call, so a batch tensor given to them whole
would get the same op, strength and box in every image; they are applied image by image here.

Order, as in torchvision's reference recipes: the policies (RandAugment, TrivialAugmentWide)
run before normalisation, on pixel values in their natural range -- uint8 0..255 as decoded, or,
for data whose pixels are not 8-bit (scikit-learn's digits count 0..16), float images scaled to
[0, 1], the other range the v2 ops define (255 would make posterize, solarize and equalize act on
a nearly black image). RandomErasing runs after normalisation, so its default fill 0 is the
dataset mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any

import torch
from torchvision.transforms import v2


def options_from_config(cls: type, config: Any, where: str) -> Any:
    """A frozen options dataclass from a config block, rejecting misspelt keys instead of
    ignoring them; ``where`` names the block in the message (``data.augment.randaugment``)."""
    if config is None or isinstance(config, cls):
        return config or cls()
    if not isinstance(config, Mapping):
        raise ValueError(f"{where} must be a mapping of options, got {config!r}")
    known = {f.name for f in fields(cls)}
    unknown = set(config) - known
    if unknown:
        raise ValueError(
            f"unknown option(s) {sorted(unknown)} in {where}; valid options are {sorted(known)}"
        )
    return cls(**{key: config[key] for key in config})


def _check_bins(where: str, bins: int) -> None:
    if not isinstance(bins, int) or bins < 2:
        raise ValueError(f"{where}.num_magnitude_bins must be an integer >= 2, got {bins!r}")


@dataclass(frozen=True)
class RandAugmentOptions:
    """``v2.RandAugment(num_ops, magnitude, num_magnitude_bins)`` when ``enabled``."""

    enabled: bool = False
    num_ops: int = 2
    magnitude: int = 9
    num_magnitude_bins: int = 31

    def __post_init__(self) -> None:
        where = "data.augment.randaugment"
        _check_bins(where, self.num_magnitude_bins)
        if not isinstance(self.num_ops, int) or self.num_ops < 1:
            raise ValueError(f"{where}.num_ops must be an integer >= 1, got {self.num_ops!r}")
        if not 0 <= self.magnitude < self.num_magnitude_bins:
            raise ValueError(
                f"{where}.magnitude must be in 0..num_magnitude_bins-1 "
                f"(0..{self.num_magnitude_bins - 1}), got {self.magnitude!r}"
            )

    def transform(self) -> v2.Transform | None:
        if not self.enabled:
            return None
        return v2.RandAugment(self.num_ops, self.magnitude, self.num_magnitude_bins)


@dataclass(frozen=True)
class TrivialAugmentOptions:
    """``v2.TrivialAugmentWide(num_magnitude_bins)`` when ``enabled``."""

    enabled: bool = False
    num_magnitude_bins: int = 31

    def __post_init__(self) -> None:
        _check_bins("data.augment.trivialaugment", self.num_magnitude_bins)

    def transform(self) -> v2.Transform | None:
        return v2.TrivialAugmentWide(self.num_magnitude_bins) if self.enabled else None


@dataclass(frozen=True)
class RandomErasingOptions:
    """``v2.RandomErasing(p, scale, ratio, value)``; ``p=0`` is off."""

    p: float = 0.0
    scale: tuple[float, float] = (0.02, 0.33)
    ratio: tuple[float, float] = (0.3, 3.3)
    value: float | str | tuple[float, ...] = 0

    def __post_init__(self) -> None:
        # config lists arrive as lists; tuples keep the dataclass hashable and comparable
        for name in ("scale", "ratio", "value"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(float(v) for v in value))
        where = "data.augment.random_erasing"
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"{where}.p must be a probability in [0, 1], got {self.p!r}")
        for name in ("scale", "ratio"):
            low_high = getattr(self, name)
            if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1]:
                raise ValueError(f"{where}.{name} must be [low, high] with 0 < low <= high")
        if isinstance(self.value, str) and self.value != "random":
            raise ValueError(f'{where}.value must be a number, a list, or "random"')

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Erase a box in each image of a float NCHW batch with probability ``p``.

        Which images are drawn here at once; v2's transform (with p=1) then erases only those,
        since a v2 call costs ~0.15 ms even when its coin says no."""
        if not self.p:
            return images
        chosen = (torch.rand(len(images)) < self.p).nonzero().flatten().tolist()
        if not chosen:
            return images
        images = images.clone()
        for i in chosen:
            images[i] = self._eraser(images[i])
        return images

    @cached_property
    def _eraser(self) -> v2.RandomErasing:
        """v2's transform with p=1, built once: ``__call__`` has already drawn which images."""
        return v2.RandomErasing(p=1.0, scale=self.scale, ratio=self.ratio, value=self.value)


def per_image(transform: v2.Transform, images: torch.Tensor) -> torch.Tensor:
    """``transform`` applied to each image of an NCHW batch with its own random draw."""
    return torch.stack([transform(image) for image in images])


def apply_policies(
    transforms: list[v2.Transform], images: torch.Tensor, pixel_max: float
) -> torch.Tensor:
    """The policy transforms on a uint8 NCHW batch whose pixels span 0..``pixel_max``.

    8-bit data stays uint8 (the v2 ops' home ground); other data becomes float in [0, 1], the v2
    ops' other pixel range, and is returned that way (``BatchNormalizer`` takes both).
    """
    if not transforms:
        return images
    if not images.is_floating_point() and pixel_max != 255.0:
        images = images.to(torch.float32) / pixel_max
    for transform in transforms:
        images = per_image(transform, images)
    return images
