"""Errors a user can fix end a command with one line on stderr and exit status 1.

A bad config value, a missing dataset, an unreadable checkpoint or a full disk already carry a
message that says what to do; the stack through Hydra and Lightning adds nothing to it. Anything
else is a bug and keeps its full traceback. ``HYDRA_FULL_ERROR=1`` (or ``CNNLAB_VERBOSE=1``)
shows the traceback of user errors too.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from lightning.fabric.utilities.exceptions import MisconfigurationException

from cnnlab.data import DatasetNotFoundError, ImageDecodeError
from cnnlab.data.archive import ArchiveError
from cnnlab.data.imagefolder import ImageFolderError
from cnnlab.training.atomic import WriteError
from cnnlab.training.callbacks import NonFiniteLossError


class UserError(Exception):
    """Something the user can fix (config, input files, environment); the message says how."""


#: OSErrors that are about the machine, not the code: the disk is full, read-only or not ours
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


USER_ERRORS = (
    UserError,
    DatasetNotFoundError,
    ImageDecodeError,
    ImageFolderError,
    ArchiveError,
    NonFiniteLossError,
    WriteError,
    MisconfigurationException,  # Lightning's own "this trainer setting cannot work"
)


def _output_dir() -> str | None:
    """This job's run folder, to say where a write failed when the OSError names no file."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else None
    except Exception:  # no Hydra job (library use, tests): nothing to add
        return None


def environment_message(err: OSError) -> str:
    """One line for a full, read-only or forbidden disk, naming the path where known."""
    path = err.filename or err.filename2
    where = f"writing {path}" if path else f"writing under {_output_dir() or 'the run folder'}"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some disk space, or write elsewhere (hydra.run.dir=..., CNNLAB_ROOT=...)"
    else:
        fix = "check the permissions, or write elsewhere (hydra.run.dir=..., CNNLAB_ROOT=...)"
    return f"{err.strerror or os.strerror(err.errno)} while {where}: {fix}."


def user_message(err: BaseException) -> str | None:
    """The one-line message for ``err`` if a user can fix it, else None (a bug).

    Hydra wraps what a ``_target_``'s constructor raises in ``InstantiationException``; the
    original error is its ``__cause__``.
    """
    from hydra.errors import InstantiationException

    config_key = None
    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        found = re.search(r"full_key: (\S+)", str(err))
        config_key = found.group(1) if found else config_key
        err = err.__cause__
    if isinstance(err, USER_ERRORS):
        text = str(err)
    elif config_key is not None and isinstance(err, ValueError | TypeError):
        # a config's _target_ refused the arguments it was given: the config is what to fix
        text = f"{config_key}: {err} (check the {config_key}.* values)"
    elif isinstance(err, OSError) and err.errno in ENVIRONMENT_ERRNOS:
        text = environment_message(err)
    else:
        return None
    return " ".join(text.split())  # one line, whatever the message's own layout


def verbose() -> bool:
    return any(
        os.environ.get(name, "") not in ("", "0") for name in ("HYDRA_FULL_ERROR", "CNNLAB_VERBOSE")
    )


@contextmanager
def user_errors_as_messages() -> Iterator[None]:
    """Print a user error's message to stderr as one line and exit with status 1.

    The run's ``metrics.json`` has already recorded the error by then. Bugs propagate.
    """
    try:
        yield
    except Exception as err:
        message = user_message(err)
        if message is None or verbose():
            raise
        print(f"Error: {message}", file=sys.stderr)
        to_log_files(f"Error: {message}")
        raise SystemExit(1) from None


def to_log_files(line: str) -> None:
    """Append ``line`` to the run's log file (Hydra's ``<run>/train.log``), so the log read
    later ends with why the run stopped; the console has the printed line already."""
    record = logging.LogRecord("cnnlab", logging.ERROR, __file__, 0, line, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
