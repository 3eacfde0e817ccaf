"""scikit-learn's bundled 8x8 handwritten digits: the offline default dataset.

It ships inside scikit-learn (1,797 images, no download), so ``make train`` works on a fresh
machine without internet and trains in seconds, while still being a real image classification
task the article's CNN can be checked on.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits

from cnnlab.data.base import ImageClassificationDataModule, LoadedData, Split
from cnnlab.data.splits import stratified_split


class DigitsDataModule(ImageClassificationDataModule):
    """1x8x8 digits scaled to [0, 1], split stratified into train/val/test with ``split_seed``.

    There is no official test set, so ``test_fraction`` of all images is held out first and
    ``val_fraction`` of the rest becomes validation.
    """

    num_classes = 10
    input_shape = (1, 8, 8)
    pixel_max = 16.0  # pixels are counts of set bits in a 4x4 block: 0..16
    # mean/std of all 1,797 images after scaling to [0, 1]
    dataset_mean = (0.3053,)
    dataset_std = (0.3761,)

    def __init__(self, test_fraction: float = 0.2, **options) -> None:
        super().__init__(**options)
        self.class_names = [str(digit) for digit in range(10)]
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        self.test_fraction = test_fraction

    def _load(self) -> LoadedData:
        digits = load_digits()
        images = torch.from_numpy(digits.images).to(torch.uint8).unsqueeze(1)
        labels = torch.from_numpy(digits.target).to(torch.int64)
        rest, test = stratified_split(labels, self.test_fraction, self.split_seed)
        return LoadedData(
            train=Split(images[rest], labels[rest]), test=Split(images[test], labels[test])
        )
