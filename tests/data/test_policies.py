"""RandAugment / TrivialAugmentWide / RandomErasing (torchvision v2) as data.augment options: they
change training images only, keep shapes and dtypes, run before normalisation on the pixel
range the v2 ops define (uint8 0..255, or float [0, 1] for the 0..16 digits) and, for erasing,
after it."""

import pytest
import torch
from torchvision.transforms import v2

from cnnlab.data import Augment, DigitsDataModule, ImageFolderDataModule

POLICIES = {
    "randaugment": {"randaugment": {"enabled": True, "num_ops": 2, "magnitude": 9}},
    "trivialaugment": {"trivialaugment": {"enabled": True}},
    "random_erasing": {"random_erasing": {"p": 1.0}},
}


def _batches(dm, augment_seed: int = 0):
    """First train batch (shuffle off: same images with and without augmentation), and val."""
    dm.setup()
    torch.manual_seed(augment_seed)
    train = dm.dataset("train").__getitems__(list(range(32)))
    val = dm.dataset("val").__getitems__(list(range(len(dm.dataset("val")))))
    return train, val


@pytest.fixture
def folder(tmp_path, write_image_folder):
    return write_image_folder(tmp_path / "pets", {"train": 12, "test": 2}, size=(16, 16))


def _modules(kind, augment, tmp_path, folder):
    if kind == "digits":
        return DigitsDataModule(data_dir=tmp_path, augment=augment, num_workers=0)
    return ImageFolderDataModule(
        root=folder, data_dir=tmp_path, augment=augment, num_workers=0, mean=[0.5], std=[0.25]
    )


@pytest.mark.parametrize("kind", ["digits", "imagefolder"])
@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_policy_changes_train_images_keeps_shape_dtype_and_range(kind, policy, tmp_path, folder):
    plain, (plain_val, _) = _batches(_modules(kind, None, tmp_path, folder))
    dm = _modules(kind, POLICIES[policy], tmp_path, folder)
    (images, labels), (val, _) = _batches(dm)
    assert images.shape == plain[0].shape and images.dtype == torch.float32
    assert torch.equal(labels, plain[1])
    changed = (images != plain[0]).flatten(1).any(1).float().mean().item()
    assert changed > 0.5, f"{policy} changed only {changed:.0%} of the images"
    assert torch.equal(val, plain_val)  # validation is never augmented
    # pixels stay in the normalised image of [0, 1] (0 = erased in normalised units): a policy
    # run after normalisation would have clamped to [0, 1] or inverted into 255 - x instead
    mean, std = torch.tensor(dm.mean).view(1, -1, 1, 1), torch.tensor(dm.std).view(1, -1, 1, 1)
    low, high = (0 - mean) / std, (1 - mean) / std
    inside = (images >= low - 1e-5) & (images <= high + 1e-5)
    assert bool((inside | (images == 0)).all())


def test_random_erasing_runs_after_normalisation_fill_is_the_mean():
    dm = DigitsDataModule(augment=POLICIES["random_erasing"], num_workers=0)
    (images, _), _ = _batches(dm)
    # digits' normalised pixels are (k/16 - 0.3053) / 0.3761, never 0: every 0 is an erased pixel
    erased = (images == 0).flatten(1).sum(1)
    assert bool((erased > 0).all())  # p = 1: every image has a box of zeros (the dataset mean)


def test_uint8_images_get_the_v2_transform_image_by_image(tmp_path, folder):
    """On 8-bit data the policy is exactly v2's transform on each uint8 image in turn."""
    augment = Augment.from_config(POLICIES["randaugment"])
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    torch.manual_seed(3)
    out = augment(images, pixel_max=255.0)
    torch.manual_seed(3)
    reference = v2.RandAugment(num_ops=2, magnitude=9)
    expected = torch.stack([reference(image) for image in images])
    assert out.dtype == torch.uint8 and torch.equal(out, expected)
    assert not torch.equal(out, images)


def test_non_8bit_images_become_float_in_unit_range():
    """Digits (0..16) go through the v2 ops as float [0, 1] images, the ops' other range."""
    augment = Augment.from_config(POLICIES["trivialaugment"])
    images = torch.randint(0, 17, (16, 1, 8, 8), dtype=torch.uint8)
    torch.manual_seed(1)
    out = augment(images, pixel_max=16.0)
    torch.manual_seed(1)
    reference = v2.TrivialAugmentWide()
    expected = torch.stack([reference(image) for image in images.float() / 16])
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_augment_is_enabled_by_policies_and_off_by_default():
    assert not Augment.from_config({}).enabled
    for block in POLICIES.values():
        assert Augment.from_config(block).enabled


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"randaugment": {"enable": True}}, r"unknown option\(s\) \['enable'\] in data.augment.randaugment"),
        ({"randaugment": {"enabled": True, "magnitude": 31}}, "magnitude must be in 0..num_magnitude_bins-1"),
        ({"trivialaugment": {"num_magnitude_bins": 1}}, "num_magnitude_bins must be an integer >= 2"),
        ({"random_erasing": {"p": 1.5}}, r"p must be a probability in \[0, 1\]"),
        ({"random_erasing": {"p": 0.5, "value": "noise"}}, 'value must be a number, a list, or "random"'),
    ],
)  # fmt: skip
def test_bad_policy_options_are_refused(config, message):
    with pytest.raises(ValueError, match=message):
        Augment.from_config(config)


def test_random_erasing_probability_is_per_image():
    torch.manual_seed(0)
    images = torch.randn(400, 1, 8, 8) + 5  # no zeros of its own
    out = Augment.from_config({"random_erasing": {"p": 0.25}}).after_normalize(images)
    erased = (out == 0).flatten(1).any(1).float().mean().item()
    assert 0.18 < erased < 0.32
    assert torch.equal(out[(out != 0).flatten(1).all(1)], images[(out != 0).flatten(1).all(1)])
