"""Train-time augmentation and the uint8 -> normalised float conversion, both per batch.

The augmentations are those of torchvision.transforms.v2 -- ``RandomCrop(size, padding)``,
``RandomHorizontalFlip()``, ``RandomRotation(degrees)`` (nearest, fill 0) -- with independent
random parameters per image, but computed for the whole uint8 batch in a few tensor ops. Applying
the v2 transforms image by image costs 0.15-0.4 ms per image on a 2-core CPU (10-25 ms per batch
of 64, more than a small CNN's training step); batched, a batch costs well under a millisecond.
tests/data/test_transforms.py checks the results against the v2 functionals image by image.
The policies (RandAugment, TrivialAugmentWide) and RandomErasing are v2's own transforms, applied
image by image (``cnnlab.data.policies``), opt-in, after the batched ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as nnf
from torchvision.transforms.v2 import functional as F

from cnnlab.data.policies import (
    RandAugmentOptions,
    RandomErasingOptions,
    TrivialAugmentOptions,
    apply_policies,
    options_from_config,
)


def random_crop(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop each image back to size at its own random offset."""
    n, _, h, w = images.shape
    padded = F.pad(images, [padding])
    tops = torch.randint(0, 2 * padding + 1, (n,)).tolist()
    lefts = torch.randint(0, 2 * padding + 1, (n,)).tolist()
    # 64 views + one stack beat a 4-way advanced-indexing gather by about 4x here
    return torch.stack(
        [image[:, t : t + h, x : x + w] for image, t, x in zip(padded, tops, lefts, strict=True)]
    )


def random_hflip(images: torch.Tensor) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(len(images)) < 0.5
    flipped = images.clone()
    flipped[flip] = F.horizontal_flip(images[flip])
    return flipped


def rotate(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate each image counter-clockwise by its angle (degrees) about its centre, like
    ``v2.functional.rotate`` with nearest interpolation and zero fill."""
    h, w = images.shape[-2:]
    rad = torch.deg2rad(angles.to(torch.float32))
    cos, sin = torch.cos(rad), torch.sin(rad)
    # affine_grid works in [-1, 1] coordinates; the aspect factors keep the rotation rigid in pixels
    theta = torch.stack(
        [torch.stack([cos, -sin * h / w, torch.zeros_like(cos)], 1),
         torch.stack([sin * w / h, cos, torch.zeros_like(cos)], 1)],
        1,
    )  # fmt: skip
    grid = nnf.affine_grid(theta, list(images.shape), align_corners=False)
    rotated = nnf.grid_sample(images.float(), grid, mode="nearest", align_corners=False)
    return rotated.to(images.dtype)


#: the nested option blocks of ``data.augment`` and their dataclasses
_POLICY_BLOCKS = {
    "randaugment": RandAugmentOptions,
    "trivialaugment": TrivialAugmentOptions,
    "random_erasing": RandomErasingOptions,
}


@dataclass(frozen=True)
class Augment:
    """Which train-only augmentations to apply (all off by default, so runs are comparable)."""

    random_crop_padding: int = 0
    hflip: bool = False
    rotation: float = 0.0
    randaugment: RandAugmentOptions = field(default_factory=RandAugmentOptions)
    trivialaugment: TrivialAugmentOptions = field(default_factory=TrivialAugmentOptions)
    random_erasing: RandomErasingOptions = field(default_factory=RandomErasingOptions)

    @classmethod
    def from_config(cls, config: Augment | Mapping[str, Any] | None) -> Augment:
        """Build from the ``augment:`` config block, rejecting misspelt keys instead of ignoring them."""
        if config is None or isinstance(config, Augment):
            return config or cls()
        known = {f.name for f in fields(cls)}
        unknown = set(config) - known
        if unknown:
            raise ValueError(
                f"unknown augment option(s) {sorted(unknown)}; valid options are {sorted(known)} "
                "(e.g. data.augment.random_crop_padding=4 data.augment.hflip=true)"
            )
        values = {
            key: options_from_config(_POLICY_BLOCKS[key], value, f"data.augment.{key}")
            if key in _POLICY_BLOCKS
            else value
            for key, value in config.items()
        }
        augment = cls(**values)
        if augment.random_crop_padding < 0 or augment.rotation < 0:
            raise ValueError(f"augment values must be >= 0, got {augment}")
        return augment

    @property
    def enabled(self) -> bool:
        return bool(self.random_crop_padding or self.hflip or self.rotation) or bool(
            self.policies or self.random_erasing.p
        )

    @cached_property
    def policies(self) -> list:
        """The enabled v2 policy transforms, built once (not per batch): the options are frozen."""
        transforms = (self.randaugment.transform(), self.trivialaugment.transform())
        return [t for t in transforms if t is not None]

    def __call__(self, images: torch.Tensor, pixel_max: float = 255.0) -> torch.Tensor:
        """Augment a uint8 NCHW batch (pixels 0..``pixel_max``), each image with its own random
        parameters: crop, flip, rotation, then the policies. Returns uint8, or float in [0, 1]
        when a policy ran on data that is not 8-bit (see ``cnnlab.data.policies``)."""
        if self.random_crop_padding:
            images = random_crop(images, self.random_crop_padding)
        if self.hflip:
            images = random_hflip(images)
        if self.rotation:
            angles = (torch.rand(len(images)) * 2 - 1) * self.rotation
            images = rotate(images, angles)
        return apply_policies(self.policies, images, pixel_max)

    def after_normalize(self, images: torch.Tensor) -> torch.Tensor:
        """What runs on the normalised float batch: RandomErasing, per image."""
        return self.random_erasing(images)


class BatchNormalizer:
    """Turns a uint8 NCHW batch into float32 ``(x / pixel_max - mean) / std`` (a float batch,
    already in [0, 1], into ``(x - mean) / std``).

    ``pixel_max`` is the value that maps to 1.0: 255 for 8-bit images, 16 for scikit-learn's
    digits, whose pixels are counts in 0..16.
    """

    def __init__(self, pixel_max: float, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.scale = 1.0 / pixel_max
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 pixels are scaled by ``1 / pixel_max``; a float batch is already in [0, 1] (a
        policy augmentation made it so) and is only normalised."""
        if batch.is_floating_point():
            images = batch.to(torch.float32, copy=True)
        else:
            images = batch.to(torch.float32).mul_(self.scale)
        return images.sub_(self.mean).div_(self.std)
