"""The batched augmentations must match torchvision.transforms.v2 image by image, and only touch
the training split."""

import pytest
import torch
from torchvision.transforms.v2 import functional as F

from cnnlab.data import Augment, DigitsDataModule
from cnnlab.data.transforms import random_crop, random_hflip, rotate


@pytest.fixture
def batch():
    return torch.randint(1, 256, (16, 3, 12, 9), dtype=torch.uint8)


def test_random_crop_is_a_v2_crop_of_the_padded_image(batch):
    torch.manual_seed(0)
    cropped = random_crop(batch, padding=3)
    padded = F.pad(batch, [3])
    offsets = set()
    for image, out in zip(padded, cropped, strict=True):
        match = [
            (t, x)
            for t in range(7)
            for x in range(7)
            if torch.equal(F.crop(image, t, x, 12, 9), out)
        ]
        assert match, "every output is some 12x9 crop of its zero-padded input"
        offsets.add(match[0])
    assert len(offsets) > 1  # each image draws its own offset


def test_random_hflip_flips_about_half_the_images(batch):
    torch.manual_seed(0)
    out = random_hflip(batch)
    flipped = [torch.equal(o, F.horizontal_flip(b)) for b, o in zip(batch, out, strict=True)]
    kept = [torch.equal(o, b) for b, o in zip(batch, out, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 0 < sum(flipped) < len(batch)


@pytest.mark.parametrize(
    ("shape", "angles"),
    [
        ((3, 16, 16), [0.0, 7.5, -30.0, 90.0, 45.0, -13.0, 180.0, 1.0]),
        # non-square: right angles put samples exactly on pixel borders, where float rounding
        # may pick either neighbour, so only generic angles must agree bit for bit
        ((3, 12, 9), [0.0, 7.5, -30.0, 45.0, -13.0, 1.0]),
    ],
)
def test_rotate_matches_v2_rotate_nearest_zero_fill(shape, angles):
    images = torch.randint(1, 256, (len(angles), *shape), dtype=torch.uint8)
    out = rotate(images, torch.tensor(angles))
    for image, angle, rotated in zip(images, angles, out, strict=True):
        assert torch.equal(rotated, F.rotate(image, angle)), angle


def test_unknown_augment_key_is_rejected():
    with pytest.raises(ValueError, match="random_crop_padding"):
        Augment.from_config({"random_crop": 4})


def test_augment_changes_train_batches_only():
    def first_batches(augment):
        dm = DigitsDataModule(augment=augment, batch_size=256)
        dm.setup()
        torch.manual_seed(0)
        train = next(iter(dm.train_dataloader()))[0]
        return train, next(iter(dm.val_dataloader()))[0], next(iter(dm.test_dataloader()))[0]

    plain = first_batches(None)
    augmented = first_batches({"random_crop_padding": 2, "hflip": True, "rotation": 15})
    assert plain[0].shape == augmented[0].shape == (256, 1, 8, 8)
    assert not torch.equal(plain[0], augmented[0])
    assert torch.equal(plain[1], augmented[1]) and torch.equal(plain[2], augmented[2])
