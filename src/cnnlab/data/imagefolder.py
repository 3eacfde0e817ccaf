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
from cnnlab.data.download import DatasetNotFoundError
from cnnlab.data.images import FileImages, ImageDecoder, decode_all

log = logging.getLogger(__name__)

LAYOUT = (
    "expected layout: <root>/train/<class_name>/<image> and <root>/test/<class_name>/<image> "
    "(or val/; validation is carved from train when there is no val/), images being any of "
    + " ".join(IMG_EXTENSIONS)
    + ", or a .tar.gz/.tgz/.zip archive of such a folder"
)
_STATS_SAMPLE = 512  # images used to estimate mean/std: enough for 2 decimals, quick to decode
_CACHE_VERSION = "2"  # bump when decoding changes, to invalidate old caches
#: PIL modes that hold one channel; any other mode (RGB, RGBA, CMYK, P, ...) is read as colour
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")


class ImageFolderError(ValueError):
    """The folder tree would train the wrong thing (an empty class, a class only in test/)."""


def _is_image(entry: os.DirEntry) -> bool:
    return entry.is_file() and entry.name.lower().endswith(IMG_EXTENSIONS)


def _class_dirs(split_dir: Path) -> list[str]:
    """Class folder names of a split; hidden folders (``.ipynb_checkpoints``) are not classes."""
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))


def _images(class_dir: Path) -> list[str]:
    with os.scandir(class_dir) as entries:
        return sorted(e.name for e in entries if _is_image(e))


def _scan(split_dir: Path, class_names: Sequence[str]) -> tuple[list[Path], torch.Tensor]:
    """All image paths under ``split_dir/<class>/`` in a stable order, with their labels."""
    files: list[Path] = []
    labels: list[int] = []
    _check_known_classes(split_dir, class_names)
    for label, name in enumerate(class_names):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue
        names = _images(class_dir)
        files.extend(class_dir / n for n in names)
        labels.extend([label] * len(names))
    if not files:
        raise DatasetNotFoundError(f"no images found under {split_dir}; {LAYOUT}")
    return files, torch.tensor(labels, dtype=torch.int64)


def _check_known_classes(split_dir: Path, class_names: Sequence[str]) -> None:
    """A class that only a test/val split has would be scored but never trained: refuse it."""
    unknown = [name for name in _class_dirs(split_dir) if name not in class_names]
    if unknown:
        raise ImageFolderError(
            f"{split_dir} has class folder(s) {unknown} that train/ does not have; every split "
            f"must use the training classes {list(class_names)}: add them to train/ or remove "
            "them"
        )


def _check_no_empty_class(train_dir: Path, class_names: Sequence[str]) -> None:
    """An empty class folder would add an output that no image ever trains: refuse it."""
    for name in class_names:
        with os.scandir(train_dir / name) as entries:
            if not any(_is_image(e) for e in entries):
                raise ImageFolderError(
                    f"class folder {train_dir / name} holds no images ({' '.join(IMG_EXTENSIONS)}); "
                    "an empty class would be a class the model can never learn: add images or "
                    "remove the folder"
                )


def choose_channels(train_dir: Path, class_names: Sequence[str]) -> tuple[int, str]:
    """1 when every training image is grayscale, else 3; and why, for the log.

    Reads only image headers, and stops at the first colour image, so an RGB set costs one
    header; an all-grayscale set reads every header once.
    """
    first_gray: Path | None = None
    count = 0
    for name in class_names:
        for file in _images(train_dir / name):
            path = train_dir / name / file
            with Image.open(path) as image:
                gray = image.mode in GRAYSCALE_MODES
            if not gray:
                if first_gray is None:
                    return 3, f"{path} is in colour"
                return 3, (
                    f"{first_gray} is grayscale but {path} is in colour; grayscale images are "
                    "repeated over 3 channels"
                )
            first_gray = first_gray or path
            count += 1
    return 1, f"all {count} training images are grayscale"


class ImageFolderDataModule(ImageClassificationDataModule):
    """Image classification from a class-per-folder tree; metadata comes from the folders.

    ``image_size`` (int or [H, W]) resizes every image; otherwise all images must share the first
    image's size. ``channels`` (1 or 3) defaults to 1 when every training image is grayscale and
    3 when any is in colour (logged); an empty class folder or a class only in test/ is refused.
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
        train = self.root / "train"
        self.class_names = _class_dirs(train)
        if not self.class_names:
            raise DatasetNotFoundError(f"{train} has no class folders; {LAYOUT}")
        _check_no_empty_class(train, self.class_names)
        for split in ("val", "test"):
            if (self.root / split).is_dir():
                _check_known_classes(self.root / split, self.class_names)
        self.num_classes = len(self.class_names)
        with Image.open(self._first_image()) as image:
            width, height = image.size
        if channels not in (None, 1, 3):
            raise ImageFolderError(f"data.channels must be 1 or 3 (or null), got {channels!r}")
        if channels is None:
            channels, reason = choose_channels(train, self.class_names)
            log.info("%s: %d input channel(s): %s", self.root, channels, reason)
        size = (image_size, image_size) if isinstance(image_size, int) else image_size
        size = tuple(size) if size is not None else None
        self.decoder = ImageDecoder(channels, size)
        self.input_shape = (self.decoder.channels, *(size or (height, width)))

    def _resolve_root(self, root: Path) -> Path:
        """The dataset folder: ``root`` itself, or where its archive was extracted."""
        root = root.resolve()
        if is_archive(root):
            if not root.is_file():
                raise DatasetNotFoundError(f"archive {root} does not exist; {LAYOUT}")
            root = extract_once(root, self.data_dir)
        if not (root / "train").is_dir():
            raise DatasetNotFoundError(
                f"no image folder dataset at {root} (missing train/); {LAYOUT}"
            )
        if not ((root / "test").is_dir() or (root / "val").is_dir()):
            raise DatasetNotFoundError(f"{root} has train/ but neither test/ nor val/; {LAYOUT}")
        return root

    def _first_image(self) -> Path:
        for name in self.class_names:
            images = _images(self.root / "train" / name)
            if images:
                return self.root / "train" / name / images[0]
        raise DatasetNotFoundError(f"no images under {self.root / 'train'}; {LAYOUT}")

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
