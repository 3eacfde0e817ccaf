"""Decoding image files to uint8 CHW tensors, one at a time or a whole folder at once.

In-memory and on-disk image folders both go through ``ImageDecoder``, so they yield identical
tensors by construction. PIL reads every format torchvision's ImageFolder accepts (torchvision's
own decoders are faster but deprecated since 0.29 in favour of torchcodec, which is not a
dependency); it releases the GIL while decoding, so a few threads speed up a whole folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

_CHUNK = 256  # files per thread task: large enough to amortise scheduling, small enough to balance


class ImageDecodeError(RuntimeError):
    """An image file could not be read or does not fit the dataset."""


@dataclass(frozen=True)
class ImageDecoder:
    """Decode a file to a uint8 tensor of ``channels`` x ``size`` (size None: keep the file's)."""

    channels: int
    size: tuple[int, int] | None = None

    def __call__(self, path: Path) -> torch.Tensor:
        try:
            image = self._read(path)
        except Exception as err:
            raise ImageDecodeError(
                f"cannot decode image {path}: {err}. Replace or delete the file."
            ) from err
        if self.size is not None and tuple(image.shape[1:]) != self.size:
            image = F.resize(image, list(self.size), antialias=True)
        return image

    def _read(self, path: Path) -> torch.Tensor:
        with Image.open(path) as image:
            array = np.array(image.convert("L" if self.channels == 1 else "RGB"))
        return torch.from_numpy(array).reshape(*array.shape[:2], -1).permute(2, 0, 1)


def _decode_chunk(decoder: ImageDecoder, paths: Sequence[Path]) -> torch.Tensor:
    images = [decoder(path) for path in paths]
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        first = tuple(images[0].shape)
        odd = next(p for p, im in zip(paths, images, strict=True) if tuple(im.shape) != first)
        raise ImageDecodeError(
            f"images differ in size ({paths[0]} is {first}, {odd} is not); set data.image_size "
            "to resize them all to one size"
        )
    return torch.stack(images)


def decode_all(decoder: ImageDecoder, paths: Sequence[Path]) -> torch.Tensor:
    """Decode ``paths`` into one uint8 NCHW tensor, using a few threads (the decoders drop the GIL)."""
    if not paths:
        raise ImageDecodeError("no images to decode")
    chunks = [paths[i : i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    threads = min(8, os.cpu_count() or 1, len(chunks))
    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(lambda chunk: _decode_chunk(decoder, chunk), chunks))
    if len({tuple(part.shape[1:]) for part in parts}) > 1:
        raise ImageDecodeError(
            "images differ in size across the folder; set data.image_size to resize them all"
        )
    return torch.cat(parts)


class FileImages:
    """Image files decoded on demand: the ``in_memory: false`` stand-in for a uint8 tensor."""

    def __init__(self, paths: Sequence[Path], decoder: ImageDecoder) -> None:
        self.paths = list(paths)
        self.decoder = decoder

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        return _decode_chunk(self.decoder, [self.paths[int(row)] for row in rows])
