"""Extract a dataset archive once, safely, even when several processes start at the same time.

The archive is unpacked into a private temporary folder and then renamed into place; a rename is
atomic, so a folder that exists is always complete, and DDP ranks racing to extract simply reuse
the winner's result.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _stem(archive: Path) -> str:
    name = archive.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def extract_once(archive: Path, into: Path) -> Path:
    """Unpack ``archive`` to ``into/<archive stem>`` unless that folder exists; return it.

    An archive holding a single top-level folder (``cifar10-jpeg.tar.gz`` holds
    ``cifar10-jpeg/``) has that folder's contents at the target, the same place a manual
    ``tar -xzf archive -C into`` puts them.
    """
    target = into / _stem(archive)
    if target.is_dir():
        return target
    if not archive.is_file():
        raise FileNotFoundError(f"archive {archive} does not exist")
    into.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-extracting-", dir=into))
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(scratch)
        else:
            with tarfile.open(archive, "r:gz") as tf:
                tf.extractall(scratch, filter="data")
        entries = [p for p in scratch.iterdir() if not p.name.startswith(("__MACOSX", "."))]
        content = entries[0] if len(entries) == 1 and entries[0].is_dir() else scratch
        try:
            content.rename(target)
        except OSError:
            if not target.is_dir():  # not a lost race with another process: a real failure
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
