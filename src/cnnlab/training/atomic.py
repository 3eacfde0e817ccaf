"""Writes that are all-or-nothing: a kill or a full disk never leaves a half-written file.

Every file a run promises (checkpoints, ``metrics.json``, sweep summaries, reports) is written to
a temporary file in the same folder, flushed to disk and then ``os.replace``'d over the target:
the rename is atomic on one filesystem, so readers see the old file or the new one, never a
truncated mix. Lightning's own checkpoint writer stages through the system temp folder and
``shutil.move``s, which is a copy (not atomic) whenever /tmp is another filesystem.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


class WriteError(OSError):
    """A file of the run could not be written (full disk, no permission, file too large)."""

    def __init__(self, path: str | Path, cause: BaseException) -> None:
        reason = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        super().__init__(
            f"could not write {path}: {reason}. The previous version of the file, if any, is "
            "unchanged; free disk space or point paths.output_dir at a writable folder."
        )
        self.path = Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path``; on a clean exit it replaces ``path`` atomically.

    On any error the temporary file is removed and :class:`WriteError` names ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the file from others
    except OSError as err:
        raise WriteError(path, err) from err
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise WriteError(path, err) from err
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return Path(path)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """``write(f)`` into a binary temporary file that then replaces ``path``."""
    with atomic_open(path, "wb") as f:
        write(f)
    return Path(path)


class _WriteRecorder:
    """A binary file for ``torch.save`` that remembers the ``OSError`` a write raised:
    ``torch.save`` turns it into a ``RuntimeError`` that no longer says "disk full"."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self._f.flush()


def save_torch(path: str | Path, obj: Any) -> Path:
    """``torch.save(obj)`` into ``path`` atomically; a failed write is a :class:`WriteError`."""

    def write(f: IO[bytes]) -> None:
        recorder = _WriteRecorder(f)
        try:
            torch.save(obj, recorder)
        except RuntimeError as err:
            if recorder.error is not None:
                raise WriteError(path, recorder.error) from err
            raise

    return atomic_write(path, write)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint writer that saves every ``.ckpt`` through :func:`atomic_open`.

    Local paths only (remote URLs go through Lightning's fsspec writer unchanged).
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        save_torch(path, checkpoint)
