"""Make sure a dataset's files are on disk, or say exactly how to get them there.

torchvision's downloaders fail offline with a bare ``URLError`` traceback that does not say which
files were expected or where; this wraps them so the user learns what is missing, the absolute
folder to put it in, where to fetch it, and that ``data.download=true`` needs internet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are absent and could not be downloaded."""


def _missing(folder: Path, candidates: Sequence[Sequence[str]]) -> list[str]:
    """Names of the expected files none of whose accepted spellings exists in ``folder``."""
    return [names[0] for names in candidates if not any((folder / n).is_file() for n in names)]


def ensure_files(
    dataset: str,
    folder: Path,
    candidates: Sequence[Sequence[str]],
    fetch_hint: str,
    download: Callable[[], None] | None,
) -> None:
    """Raise ``DatasetNotFoundError`` unless every expected file exists (downloading if allowed).

    ``candidates`` lists, per expected file, the names that are accepted for it (for example the
    raw and the gzipped idx file); ``fetch_hint`` tells the user where to get the files.
    """
    missing = _missing(folder, candidates)
    if not missing:
        return
    failure = ""
    if download is not None:
        try:
            download()
        except Exception as err:  # any failure leaves the same remedy: fetch the files by hand
            failure = f"The download failed ({type(err).__name__}: {err}). "
        else:
            missing = _missing(folder, candidates)
            if not missing:
                return
            failure = "The download finished but did not produce these files. "
    raise DatasetNotFoundError(
        f"{dataset} files are missing from {folder}: {', '.join(missing)}. {failure}"
        f"{fetch_hint} Automatic download is data.download=true (the default) and needs "
        "internet access; without it, copy the files into the folder above."
    )
