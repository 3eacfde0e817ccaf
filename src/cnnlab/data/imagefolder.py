"""Any folder of class-labelled images, or an archive of one.

Layout: ``root/train/<class>/*.jpg`` and ``root/test/<class>/*`` (or ``root/val/<class>/*``).
With ``in_memory`` (the default) every image is decoded once into a uint8 tensor that is cached
under ``root/.cnnlab-cache/``, keyed by the file list, so later runs start instantly; with
``in_memory: false`` files are decoded per batch, for datasets larger than RAM.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from cnnlab.data.archive import extract_once, is_archive
from cnnlab.data.base import ImageClassificationDataModule, LoadedData, Split
from cnnlab.data.images import FileImages, ImageDecoder, decode_all

log = logging.getLogger(__name__)

LAYOUT = (
    "expected layout:\n"
    "  <root>/train/<class_name>/<image>.jpg   (any of "
    + " ".join(IMG_EXTENSIONS)
    + ")\n  <root>/test/<class_name>/<image>.jpg    (or val/; validation is carved from train "
    "when there is no val/)\n"
    "or a .tar.gz/.tgz/.zip archive of such a folder"
)
_STATS_SAMPLE = 512  # images used to estimate mean/std: enough for 2 decimals, quick to decode
_CACHE_VERSION = "2"  # bump when decoding changes, to invalidate old caches


def _is_image(entry: os.DirEntry) -> bool:
    return entry.is_file() and entry.name.lower().endswith(IMG_EXTENSIONS)


def _scan(split_dir: Path, class_names: Sequence[str]) -> tuple[list[Path], torch.Tensor]:
    """All image paths under ``split_dir/<class>/`` in a stable order, with their labels."""
    files: list[Path] = []
    labels: list[int] = []
    unknown = sorted(
        d.name for d in split_dir.iterdir() if d.is_dir() and d.name not in class_names
    )
    if unknown:
        raise ValueError(
            f"{split_dir} has class folders {unknown} that train/ does not have; every split must "
            f"use the training classes {list(class_names)}"
        )
    for label, name in enumerate(class_names):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue
        with os.scandir(class_dir) as entries:
            names = sorted(e.name for e in entries if _is_image(e))
        files.extend(class_dir / n for n in names)
        labels.extend([label] * len(names))
    if not files:
        raise FileNotFoundError(f"no images found under {split_dir}; {LAYOUT}")
    return files, torch.tensor(labels, dtype=torch.int64)


class ImageFolderDataModule(ImageClassificationDataModule):
    """Image classification from a class-per-folder tree; metadata comes from the folders.

    ``image_size`` (int or [H, W]) resizes every image; otherwise all images must share the first
    image's size. ``channels`` (1 or 3) defaults to the first image's (grayscale -> 1, else 3).
    ``mean``/``std`` default to estimates from a seeded sample of training images.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int | Sequence[int] | None = None,
        channels: int | None = None,
        in_memory: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        **options,
    ) -> None:
        super().__init__(**options)
        self.root = self._resolve_root(Path(root).expanduser())
        self.in_memory = in_memory
        self._mean, self._std = mean, std
        self.class_names = sorted(d.name for d in (self.root / "train").iterdir() if d.is_dir())
        if not self.class_names:
            raise FileNotFoundError(f"{self.root / 'train'} has no class folders; {LAYOUT}")
        self.num_classes = len(self.class_names)
        first = self._first_image()
        with Image.open(first) as image:
            width, height = image.size
            grayscale = image.mode in ("1", "L", "LA", "I", "I;16", "F")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        size = (image_size, image_size) if isinstance(image_size, int) else image_size
        size = tuple(size) if size is not None else None
        self.decoder = ImageDecoder(channels or (1 if grayscale else 3), size)
        self.input_shape = (self.decoder.channels, *(size or (height, width)))

    def _resolve_root(self, root: Path) -> Path:
        """The dataset folder: ``root`` itself, or where its archive was extracted."""
        root = root.resolve()
        if is_archive(root):
            if not root.is_file():
                raise FileNotFoundError(f"archive {root} does not exist; {LAYOUT}")
            root = extract_once(root, self.data_dir)
        if not (root / "train").is_dir():
            raise FileNotFoundError(f"no image folder dataset at {root} (missing train/); {LAYOUT}")
        if not ((root / "test").is_dir() or (root / "val").is_dir()):
            raise FileNotFoundError(f"{root} has train/ but neither test/ nor val/; {LAYOUT}")
        return root

    def _first_image(self) -> Path:
        for name in self.class_names:
            with os.scandir(self.root / "train" / name) as entries:
                images = sorted(e.name for e in entries if _is_image(e))
            if images:
                return self.root / "train" / name / images[0]
        raise FileNotFoundError(f"no images under {self.root / 'train'}; {LAYOUT}")

    # -- normalisation ------------------------------------------------------------------------
    @cached_property
    def _estimated_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        files, _ = _scan(self.root / "train", self.class_names)
        generator = torch.Generator().manual_seed(self.split_seed)
        pick = torch.randperm(len(files), generator=generator)[:_STATS_SAMPLE]
        images = torch.stack([self.decoder(files[int(i)]) for i in pick]).float() / 255
        mean = images.mean(dim=(0, 2, 3))
        std = images.std(dim=(0, 2, 3))
        return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())

    @property
    def dataset_mean(self) -> tuple[float, ...]:
        return tuple(self._mean) if self._mean is not None else self._estimated_stats[0]

    @property
    def dataset_std(self) -> tuple[float, ...]:
        return tuple(self._std) if self._std is not None else self._estimated_stats[1]

    # -- loading ------------------------------------------------------------------------------
    def _split(self, name: str) -> Split:
        files, labels = _scan(self.root / name, self.class_names)
        if not self.in_memory:
            return Split(FileImages(files, self.decoder), labels)
        return Split(self._decode_cached(name, files), labels)

    def _decode_cached(self, split: str, files: list[Path]) -> torch.Tensor:
        cache = self._cache_path(split, files)
        if cache.is_file():
            return torch.load(cache, weights_only=True)
        images = decode_all(self.decoder, files)
        try:
            cache.parent.mkdir(exist_ok=True)
            partial = cache.with_suffix(f".{os.getpid()}.tmp")
            torch.save(images, partial)
            os.replace(partial, cache)
        except OSError as err:
            log.warning(
                "could not cache decoded images at %s (%s); decoding again next run", cache, err
            )
        return images

    def _cache_path(self, split: str, files: list[Path]) -> Path:
        """Cache file name keyed by every file's path, size and mtime plus the decode settings."""
        digest = hashlib.sha1(f"{_CACHE_VERSION}|{self.decoder}".encode())
        for path in files:
            stat = path.stat()
            digest.update(
                f"{path.relative_to(self.root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode()
            )
        return self.root / ".cnnlab-cache" / f"{split}-{digest.hexdigest()[:16]}.pt"

    def _load(self) -> LoadedData:
        val = self._split("val") if (self.root / "val").is_dir() else None
        test = self._split("test") if (self.root / "test").is_dir() else val
        if test is val:
            log.info("%s has no test/: val/ serves as validation and test set", self.root)
        return LoadedData(train=self._split("train"), test=test, val=val)
