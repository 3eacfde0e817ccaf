"""MNIST and Fashion-MNIST from their idx files, as torchvision lays them out.

Files live in ``<data_dir>/MNIST/raw/`` (``FashionMNIST/raw/``), raw or gzipped, exactly where
``torchvision.datasets.MNIST`` downloads them, so an existing torchvision download is reused.
The idx reader is a few lines and accepts both spellings, which torchvision's loader does not.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import MNIST, FashionMNIST

from cnnlab.data.base import ImageClassificationDataModule, LoadedData, Split
from cnnlab.data.download import ensure_files

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_UBYTE = 0x08


def read_idx(path: Path) -> torch.Tensor:
    """Read an unsigned-byte idx file (optionally gzipped) into a uint8 tensor of its shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != _UBYTE:
        raise ValueError(f"{path} is not an unsigned-byte idx file (bad magic number {raw[:4]!r})")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {data.size} values")
    return torch.from_numpy(data.reshape(shape).copy())


class MNISTDataModule(ImageClassificationDataModule):
    """MNIST: 60,000 train (validation carved from it) and the official 10,000 test digits."""

    torchvision_class: type[MNIST] = MNIST
    dataset_name = "MNIST"
    num_classes = 10
    input_shape = (1, 28, 28)
    classes: tuple[str, ...] = tuple(str(digit) for digit in range(10))
    dataset_mean = (0.1307,)
    dataset_std = (0.3081,)

    def __init__(self, download: bool = True, **options) -> None:
        super().__init__(**options)
        self.class_names = list(self.classes)
        self.download = download

    @property
    def folder(self) -> Path:
        return self.data_dir / self.torchvision_class.__name__ / "raw"

    def _path(self, key: str) -> Path:
        raw = self.folder / FILES[key]
        return raw if raw.is_file() else raw.with_name(raw.name + ".gz")

    def _ensure_files(self) -> None:
        mirror = self.torchvision_class.mirrors[0]
        ensure_files(
            self.dataset_name,
            self.folder,
            [[name, name + ".gz"] for name in FILES.values()],
            fetch_hint=(
                f"Get them from {mirror} ({', '.join(n + '.gz' for n in FILES.values())}) "
                "and put them, gzipped or not, into that folder."
            ),
            download=self._download if self.download else None,
        )

    def _download(self) -> None:
        self.torchvision_class(str(self.data_dir), train=True, download=True)

    def prepare_data(self) -> None:
        self._ensure_files()

    def _load(self) -> LoadedData:
        self._ensure_files()

        def split(prefix: str) -> Split:
            images = read_idx(self._path(f"{prefix}_images")).unsqueeze(1)
            labels = read_idx(self._path(f"{prefix}_labels")).to(torch.int64)
            if len(images) != len(labels):
                raise ValueError(
                    f"{self.folder}: {prefix} has {len(images)} images but {len(labels)} labels"
                )
            return Split(images, labels)

        return LoadedData(train=split("train"), test=split("test"))


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST: the same format and sizes as MNIST, ten clothing classes."""

    torchvision_class = FashionMNIST
    dataset_name = "Fashion-MNIST"
    classes = tuple(FashionMNIST.classes)
    dataset_mean = (0.2860,)
    dataset_std = (0.3530,)
