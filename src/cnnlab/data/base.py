"""What every cnnlab data module shares: options, splits, loaders.

A subclass states its metadata (``num_classes``, ``input_shape``, ``class_names``, default
``mean``/``std``) in ``__init__`` without touching the data, and implements ``_load`` to return
the decoded uint8 images and labels of its train and test (and optionally val) splits. Everything
else -- carving validation from train, augmentation, normalisation, worker settings -- lives here
once, so every dataset behaves the same under the same config keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from cnnlab.data.dataset import ImageDataset, ImageSource, collate_batch
from cnnlab.data.mixing import BatchMix, CutMixOptions, MixUpOptions, mix_options
from cnnlab.data.splits import stratified_split
from cnnlab.data.transforms import Augment, BatchNormalizer


@dataclass
class Split:
    """Decoded images of one split with their int64 labels."""

    images: ImageSource
    labels: torch.Tensor


@dataclass
class LoadedData:
    """What ``_load`` returns; ``val`` is None when validation is carved from ``train``."""

    train: Split
    test: Split
    val: Split | None = None


def default_num_workers(in_memory: bool, augment: bool, processes: int = 1) -> int:
    """Workers that keep the model fed without stealing its cores.

    Batches gathered from an in-memory tensor cost microseconds, so worker processes would only
    add IPC; per-sample augmentation or decoding files is real work worth overlapping with the
    training step, but on a small CPU box every worker also takes a core from the model. Under
    DDP each of the ``processes`` on this machine starts its own workers, so they share its cores.
    """
    if in_memory and not augment:
        return 0
    cores = max(1, (os.cpu_count() or 1) // max(1, processes))
    return max(1, min(8, cores // 2)) if in_memory else max(1, min(8, cores - 1))


class ImageClassificationDataModule(L.LightningDataModule):
    """Base class; see the module docstring for the subclass contract."""

    num_classes: int
    input_shape: tuple[int, int, int]
    class_names: list[str]
    #: value that maps to 1.0 when converting uint8 pixels to float
    pixel_max: float = 255.0
    #: whether ``_load`` yields tensors (True) or lazily decoded files
    in_memory: bool = True
    #: the dataset's normalisation constants (one value, or one per channel)
    dataset_mean: tuple[float, ...] = (0.0,)
    dataset_std: tuple[float, ...] = (1.0,)

    def __init__(
        self,
        data_dir: str | os.PathLike = "data",
        batch_size: int = 64,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        val_fraction: float = 0.1,
        split_seed: int = 42,
        normalize: bool = True,
        augment: Augment | Mapping[str, Any] | None = None,
        limit_train_samples: int | None = None,
        mixup: MixUpOptions | Mapping[str, Any] | None = None,
        cutmix: CutMixOptions | Mapping[str, Any] | None = None,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(
                f"val_fraction must be in (0, 1), got {val_fraction}: it is the share of the "
                "training set held out for validation"
            )
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.batch_size = batch_size
        self._num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.normalize = normalize
        self.augment = Augment.from_config(augment)
        self.limit_train_samples = limit_train_samples
        self.mixup, self.cutmix = mix_options(mixup, cutmix)
        self.drop_last = drop_last
        self._datasets: dict[str, ImageDataset] = {}

    # -- metadata -------------------------------------------------------------------------------
    @property
    def mean(self) -> tuple[float, ...]:
        channels = self.input_shape[0]
        return self._per_channel(self.dataset_mean) if self.normalize else (0.0,) * channels

    @property
    def std(self) -> tuple[float, ...]:
        channels = self.input_shape[0]
        return self._per_channel(self.dataset_std) if self.normalize else (1.0,) * channels

    def _per_channel(self, values: tuple[float, ...]) -> tuple[float, ...]:
        channels = self.input_shape[0]
        values = tuple(float(v) for v in values)
        if len(values) not in (1, channels):
            raise ValueError(
                f"normalisation constants {values} do not fit {channels}-channel images; "
                f"give one value or {channels} (data.mean / data.std)"
            )
        return values * channels if len(values) == 1 else values

    @property
    def num_workers(self) -> int:
        if self._num_workers is not None:
            return self._num_workers
        return default_num_workers(
            self.in_memory, self.augment.enabled, self._processes_per_machine()
        )

    def _processes_per_machine(self) -> int:
        """Training processes on this machine: one per device of the attached trainer under DDP
        (Lightning's ``num_devices`` is per node), else ``LOCAL_WORLD_SIZE`` (torchrun), else 1."""
        if self.trainer is not None:
            return self.trainer.num_devices
        return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))

    def batch_mix(self) -> BatchMix | None:
        """MixUp/CutMix for training batches (applied by the LightningModule on the device), or
        None when ``data.mixup.alpha`` and ``data.cutmix.alpha`` are both 0."""
        if not (self.mixup.alpha > 0 or self.cutmix.alpha > 0):
            return None
        return BatchMix(self.num_classes, self.mixup, self.cutmix)

    # -- subclass hook --------------------------------------------------------------------------
    def _load(self) -> LoadedData:
        raise NotImplementedError(f"{type(self).__name__} must implement _load()")

    # -- Lightning hooks ------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._datasets:
            return
        data = self._load()
        normalizer = BatchNormalizer(self.pixel_max, self.mean, self.std)
        augment = partial(self.augment, pixel_max=self.pixel_max) if self.augment.enabled else None
        erase = self.augment.after_normalize if self.augment.random_erasing.p else None

        def subset(split: Split, indices: torch.Tensor, train: bool = False) -> ImageDataset:
            if not train:
                return ImageDataset(split.images, split.labels, indices, normalizer)
            return ImageDataset(split.images, split.labels, indices, normalizer, augment, erase)

        if data.val is None:
            train_idx, val_idx = stratified_split(
                data.train.labels, self.val_fraction, self.split_seed
            )
            val = subset(data.train, val_idx)
        else:
            train_idx = torch.arange(len(data.train.labels))
            val = subset(data.val, torch.arange(len(data.val.labels)))
        if self.limit_train_samples is not None:
            order = torch.randperm(
                len(train_idx), generator=torch.Generator().manual_seed(self.split_seed)
            )
            train_idx = train_idx[order[: self.limit_train_samples]].sort().values
        self._datasets = {
            "train": subset(data.train, train_idx, train=True),
            "val": val,
            "test": subset(data.test, torch.arange(len(data.test.labels))),
        }

    def dataset(self, split: str) -> ImageDataset:
        """The ``train``/``val``/``test`` dataset (runs ``setup`` on first use)."""
        self.setup()
        if split not in self._datasets:
            raise KeyError(f"unknown split {split!r}; choose one of {sorted(self._datasets)}")
        return self._datasets[split]

    def _loader(self, split: str, shuffle: bool, drop_last: bool = False) -> DataLoader:
        workers = self.num_workers
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and workers > 0,
            collate_fn=collate_batch,
            drop_last=drop_last,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True, drop_last=self.drop_last)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
