"""Errors a user can fix end a command with their message, not a traceback through Lightning.

A missing dataset, an unreadable image or a diverged loss already carry a message that says what
to do; the stack through Lightning's data and fit loops adds nothing to it. Anything else is a
bug and keeps its full traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from cnnlab.data import DatasetNotFoundError, ImageDecodeError
from cnnlab.training.atomic import WriteError
from cnnlab.training.callbacks import NonFiniteLossError

USER_ERRORS = (DatasetNotFoundError, ImageDecodeError, NonFiniteLossError, WriteError)


@contextmanager
def user_errors_as_messages() -> Iterator[None]:
    """Print a :data:`USER_ERRORS` exception's message to stderr and exit with status 1.

    The run's ``metrics.json`` has already recorded the error by then.
    """
    try:
        yield
    except USER_ERRORS as err:
        print(f"Error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
