"""CIFAR-10 from its official python pickles (``cifar-10-batches-py/``).

The pickles are read directly rather than through ``torchvision.datasets.CIFAR10`` so that the
whole split lands in one uint8 tensor without a per-image PIL round trip; torchvision is still
what downloads and checksums the archive.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import download_and_extract_archive

from cnnlab.data.base import ImageClassificationDataModule, LoadedData, Split
from cnnlab.data.download import ensure_files

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCHES = ["test_batch"]
CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


def read_batches(folder: Path, names: list[str]) -> Split:
    """Concatenate pickled CIFAR batches (``data``: N x 3072 uint8 rows, ``labels``) into NCHW."""
    images, labels = [], []
    for name in names:
        with open(folder / name, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch["labels"])
    return Split(torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64))


class CIFAR10DataModule(ImageClassificationDataModule):
    """CIFAR-10: 50,000 train (validation carved from it) and the official 10,000 test images."""

    num_classes = 10
    input_shape = (3, 32, 32)
    dataset_mean = (0.4914, 0.4822, 0.4465)
    dataset_std = (0.2470, 0.2435, 0.2616)

    def __init__(self, download: bool = True, **options) -> None:
        super().__init__(**options)
        self.class_names = list(CLASSES)
        self.download = download

    @property
    def folder(self) -> Path:
        return self.data_dir / CIFAR10.base_folder

    def _ensure_files(self) -> None:
        ensure_files(
            "CIFAR-10",
            self.folder,
            [[name] for name in [*TRAIN_BATCHES, *TEST_BATCHES]],
            fetch_hint=(
                f"Get {CIFAR10.url} and extract it into {self.data_dir} "
                f"(it unpacks to {CIFAR10.base_folder}/)."
            ),
            download=self._download if self.download else None,
        )

    def _download(self) -> None:
        download_and_extract_archive(
            CIFAR10.url, str(self.data_dir), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5
        )

    def prepare_data(self) -> None:
        self._ensure_files()

    def _load(self) -> LoadedData:
        self._ensure_files()
        return LoadedData(
            train=read_batches(self.folder, TRAIN_BATCHES),
            test=read_batches(self.folder, TEST_BATCHES),
        )
