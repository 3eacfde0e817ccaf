"""Extract a dataset archive once, safely, even when several processes start at the same time.

The archive is unpacked into a private temporary folder and then renamed into place; a rename is
atomic, so a folder that exists is always complete, and DDP ranks racing to extract simply reuse
the winner's result.
"""

from __future__ import annotations

import errno
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
#: what tarfile/gzip/zipfile raise for a file that is not, or no longer, a whole archive (plus
#: gzip.BadGzipFile, an OSError without an errno)
_BROKEN = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class ArchiveError(ValueError):
    """A dataset archive is truncated, corrupt or not in the format its name says."""


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
        _unpack(archive, scratch, target)
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


def _unpack(archive: Path, scratch: Path, target: Path) -> None:
    """Extract into ``scratch``; a broken archive or a full disk becomes a one-line error."""
    is_zip = archive.name.lower().endswith(".zip")
    try:
        if is_zip:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(scratch)
        else:
            with tarfile.open(archive, "r:gz") as tf:
                tf.extractall(scratch, filter="data")
    except OSError as err:
        if err.errno in _DISK_FULL:  # the path that matters is where it was going
            raise OSError(err.errno, f"{err.strerror} extracting {archive}", str(target)) from err
        if err.errno is not None:
            raise  # permissions and the like: the OSError names its own path
        raise _broken(archive, err, is_zip) from err
    except _BROKEN as err:
        raise _broken(archive, err, is_zip) from err


def _broken(archive: Path, err: BaseException, is_zip: bool) -> ArchiveError:
    kind = "a zip archive" if is_zip else "a gzip-compressed tar archive (.tar.gz)"
    return ArchiveError(
        f"cannot extract {archive}: it is truncated or not {kind} ({type(err).__name__}: {err}); "
        "download it again, or extract it yourself and pass the folder as data.root"
    )
