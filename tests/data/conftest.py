"""Tiny datasets written in their real on-disk formats, so the loaders are tested end to end."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _write_cifar10(root: Path, per_batch: int = 20, seed: int = 0) -> np.ndarray:
    """Write ``cifar-10-batches-py`` with five train batches and a test batch; return test data."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            "batch_label": name,
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "labels": [i % 10 for i in range(per_batch)],
            "filenames": [f"{name}_{i}.png" for i in range(per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer",
                                     "dog", "frog", "horse", "ship", "truck"]}, f)  # fmt: skip
    return batch["data"]


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write an unsigned-byte idx file (gzipped when ``path`` ends in .gz)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}i", *array.shape
    )
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _write_mnist(raw: Path, n_train: int = 50, n_test: int = 20, gz: bool = True) -> np.ndarray:
    """Write the four MNIST idx files into ``raw``; return the training images."""
    rng = np.random.default_rng(1)
    raw.mkdir(parents=True)
    suffix = ".gz" if gz else ""
    train = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    _write_idx(raw / f"train-images-idx3-ubyte{suffix}", train)
    _write_idx(raw / f"train-labels-idx1-ubyte{suffix}", np.arange(n_train) % 10)
    _write_idx(raw / f"t10k-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n_test, 28, 28)))
    _write_idx(raw / f"t10k-labels-idx1-ubyte{suffix}", np.arange(n_test) % 10)
    return train


def _write_image_folder(
    root: Path, splits: dict[str, int], classes=("cat", "dog", "emu"), size=(12, 10), mode="RGB"
) -> Path:
    """Write ``root/<split>/<class>/<i>.jpg`` (PNG for grayscale) with ``splits[split]`` per class."""
    rng = np.random.default_rng(2)
    channels = 3 if mode == "RGB" else 1
    for split, per_class in splits.items():
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size[0], size[1], channels), dtype=np.uint8)
                image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)
                image.save(root / split / name / f"{i:03d}.{'jpg' if mode == 'RGB' else 'png'}")
    return root


# The writers are handed out as fixtures so test modules need no imports from this file.
@pytest.fixture
def write_cifar10():
    return _write_cifar10


@pytest.fixture
def write_idx():
    return _write_idx


@pytest.fixture
def write_mnist():
    return _write_mnist


@pytest.fixture
def write_image_folder():
    return _write_image_folder
